//! The Kubernetes executor (`--kubernetes-executor`): each job in its own
//! pod, its commands in a login bash reached through the pod's `exec`
//! subresource.
//!
//! Owns the job's objects in the cluster and their order, as in the Go
//! agent: `prepare` creates the job's secret (the `.env` with the job's
//! env vars and `--env-vars`, and every file), the image pull secret when
//! the job has credentials, and the pod, each labelled with the agent's
//! name and, when the agent runs in a pod, owned by that pod (so the
//! cluster deletes them if the agent dies); `start` waits for the pod and
//! opens `bash --login` in its `main` container in a PTY with the host
//! shell's marker protocol, every command typed inline
//! (`Shell::start_inline`: bash in the pod cannot read our files). What
//! runs in the PTY is the agent's own exec bridge (`kubernetes::exec`: the
//! exec WebSocket, no kubectl); a server that refuses the WebSocket gets
//! one agent-log line and `kubectl exec -it -n <ns> <pod> -c main -- bash
//! --login` instead. Bash runs as Go runs it, `--login` with readline on:
//! the typed lines are short printable ASCII without tabs, so readline
//! neither completes nor meets the terminal's line limit, and its echo of
//! them comes before each command's start marker and is dropped;
//! `--noediting` would leave the pod's terminal echoing instead, to the
//! same effect, so the Go agent's command line is kept. Env export sources
//! the mounted `.env` and file injection copies from the mount. `close`
//! cancels a wait, ends the PTY and deletes the pod and the secrets,
//! whatever happened before. It must not decide the job's result or the
//! order of steps (the lifecycle does).

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use super::pty_bash::{env_file_content, far_stop, far_stop_script, PtyCommands};
use super::{
    Commands, Executor, FileFailure, JobEnv, JobLog, JobOptions, Outcome, SetupError, Stop,
};
use crate::kubernetes::{self, Client, Decorator, KubernetesConfig, PodProgress};
use crate::request::{File, JobRequest};
use crate::shell::{shell_quote, Launch, Shell, ShellError, ShellOptions};

/// Directive of `prepare`.
pub const PREPARE_DIRECTIVE: &str = "Creating Kubernetes resources for job...";
/// Directive of `start`.
pub const START_DIRECTIVE: &str = "Starting shell session...";

/// How often the pod is looked at while it starts.
const POLL_INTERVAL: Duration = Duration::from_secs(1);

/// The longest a stop waits to be seen while the executor sleeps between
/// polls.
const CANCEL_TICK: Duration = Duration::from_millis(50);

pub struct KubernetesExecutor<'a> {
    /// Borrowed for the job: a request can be hundreds of megabytes.
    request: &'a JobRequest,
    /// The job's decoded env vars (and `--env-vars`), written into the
    /// pod's `.env`.
    env: &'a JobEnv,
    settings: JobOptions,
    config: Arc<KubernetesConfig>,
    stop: Stop,
    /// Raised by a stop: ends the wait for the pod.
    cancel: Arc<AtomicBool>,
    client: Option<Client>,
    pod_name: String,
    /// What was created, in order (`resource`, name), deleted at `close`.
    created: Vec<(&'static str, String)>,
    /// Whether the pod's `.env` holds `env` and was not sourced yet: the
    /// first export of the same vars sources that file instead of typing
    /// the values.
    env_file_pending: bool,
    pty: PtyCommands,
    injected_dir: String,
    /// Outside a cluster: the names of `created`, on disk, for the next
    /// run should this one be killed before `close`.
    journal: Option<kubernetes::Journal>,
}

impl<'a> KubernetesExecutor<'a> {
    pub fn new(
        request: &'a JobRequest,
        env: &'a JobEnv,
        settings: &JobOptions,
        config: &Arc<KubernetesConfig>,
        stop: &Stop,
    ) -> KubernetesExecutor<'a> {
        let cancel = Arc::new(AtomicBool::new(false));
        let flag = Arc::clone(&cancel);
        stop.on_stop(Box::new(move || flag.store(true, Ordering::SeqCst)));
        KubernetesExecutor {
            request,
            env,
            settings: settings.clone(),
            config: Arc::clone(config),
            stop: stop.clone(),
            cancel,
            client: None,
            pod_name: format!("semaphore-job-{}", request.job_id),
            created: Vec::new(),
            env_file_pending: false,
            pty: PtyCommands::default(),
            injected_dir: injected_dir(),
            journal: None,
        }
    }

    fn cancelled(&self) -> bool {
        self.cancel.load(Ordering::SeqCst)
    }

    /// Creates the secrets and the pod; the error is the job log's line.
    fn create_resources(&mut self) -> Result<(), KubernetesJobError> {
        // The name goes into API paths: anything but a DNS name would be
        // refused by the API at best, or address another object.
        if !is_object_name(&format!("{}-image-pull-secret", self.pod_name)) {
            return Err(KubernetesJobError::BadJobId {
                job_id: self.request.job_id.clone(),
            });
        }
        let client =
            Client::discover(&self.config.namespace).map_err(KubernetesJobError::CreateClient)?;
        let decorator = match &self.config.pod_spec {
            Some(name) => {
                let config_map = client.get_config_map(name).map_err(|error| {
                    KubernetesJobError::GetPodSpec {
                        name: name.clone(),
                        error,
                    }
                })?;
                Decorator::from_config_map(name, &config_map)
                    .map_err(KubernetesJobError::LoadPodSpec)?
            }
            None => Decorator::default(),
        };
        let labels = job_labels(&self.config);
        let owner = owner_pod(&self.config.namespace);
        if owner.is_none() {
            self.journal = kubernetes::Journal::for_agent(&self.config.agent_name);
            delete_leftovers_once(&client, &self.config.agent_name, self.journal.as_ref());
        }
        let env_secret = format!("{}-secret", self.pod_name);
        let pull_secret = format!("{}-image-pull-secret", self.pod_name);
        let has_credentials = !self.request.compose.image_pull_credentials.is_empty();
        let allowed: Vec<regex_lite::Regex> = self
            .config
            .allowed_images
            .iter()
            .filter_map(|r| regex_lite::Regex::new(r).ok())
            .collect();
        // The pod is built (and its images checked) before anything is
        // created, so a refused job leaves nothing behind; the message is
        // the one Go shows after its own attempt.
        let mut pod = kubernetes::pod(
            &self.pod_name,
            &self.config.namespace,
            &labels,
            &decorator,
            &self.request.compose.containers,
            self.config.default_image.as_deref(),
            &allowed,
            &env_secret,
            has_credentials.then_some(pull_secret.as_str()),
            &self.injected_dir,
        )
        .map_err(KubernetesJobError::BuildPod)?;
        let docker_config = if has_credentials {
            Some(
                kubernetes::docker_config_json(&self.request.compose.image_pull_credentials)
                    .map_err(|error| KubernetesJobError::BuildPullSecret {
                        name: pull_secret.clone(),
                        error,
                    })?,
            )
        } else {
            None
        };
        let mut secret = kubernetes::env_secret(
            &env_secret,
            &self.config.namespace,
            &labels,
            &env_file_content(self.env),
            &self.request.files,
        )
        .map_err(KubernetesJobError::BuildEnvSecret)?;
        owned_by(&mut pod, owner);
        owned_by(&mut secret, owner);
        self.env_file_pending = true;
        self.client = Some(client);

        if self.cancel.load(Ordering::SeqCst) {
            return Err(KubernetesJobError::Stopped);
        }
        // Recorded before the call: an answer lost to a timeout may still
        // have created the object, and deleting one that is not there
        // costs a 404.
        self.created.push(("secrets", env_secret));
        self.record_created();
        let client = self.client.as_ref().ok_or(KubernetesJobError::NoClient)?;
        client
            .create("secrets", &secret)
            .map_err(KubernetesJobError::CreateEnvSecret)?;
        if let Some(docker_config) = docker_config {
            let mut secret = kubernetes::pull_secret(
                &pull_secret,
                &self.config.namespace,
                &labels,
                &docker_config,
            );
            owned_by(&mut secret, owner);
            self.created.push(("secrets", pull_secret));
            self.record_created();
            let client = self.client.as_ref().ok_or(KubernetesJobError::NoClient)?;
            client
                .create("secrets", &secret)
                .map_err(KubernetesJobError::CreatePullSecret)?;
        }
        if self.cancel.load(Ordering::SeqCst) {
            return Err(KubernetesJobError::Stopped);
        }
        self.created.push(("pods", self.pod_name.clone()));
        self.record_created();
        let client = self.client.as_ref().ok_or(KubernetesJobError::NoClient)?;
        client
            .create("pods", &pod)
            .map_err(KubernetesJobError::CreatePod)?;
        Ok(())
    }

    /// Polls the pod until it is ready, logging why it is not yet; the
    /// error is what the job log shows after "Failed to create pod: ".
    fn wait_for_pod(&self, log: &mut JobLog<'_>) -> Result<(), PodStartError> {
        let Some(client) = self.client.as_ref() else {
            return Err(PodStartError::NoClient);
        };
        let timeout = self.config.pod_start_timeout;
        let deadline = Instant::now() + timeout;
        let interval = poll_interval();
        let mut last;
        loop {
            if self.cancelled() {
                return Err(PodStartError::Stopped);
            }
            match client.get_pod(&self.pod_name) {
                Ok(pod) => match kubernetes::pod_progress(&pod) {
                    PodProgress::Ready => return Ok(()),
                    PodProgress::Failed(reason) => return Err(PodStartError::Finished { reason }),
                    PodProgress::Waiting(why) => {
                        log.output(format!("{why}\n"));
                        log::info!("{why}");
                        last = why;
                    }
                },
                // Access denied or the pod gone will not get better.
                Err(e) if matches!(e.status(), Some(401 | 403 | 404)) => {
                    return Err(PodStartError::GetPod(e))
                }
                Err(e) => {
                    let why = e.to_string();
                    log.output(format!("{why}\n"));
                    log::warn!("{why}");
                    last = why;
                }
            }
            let next = Instant::now() + interval;
            if next > deadline {
                return Err(PodStartError::TimedOut {
                    pod: self.pod_name.clone(),
                    secs: timeout.as_secs(),
                    last,
                });
            }
            while Instant::now() < next {
                if self.cancelled() {
                    return Err(PodStartError::Stopped);
                }
                std::thread::sleep(CANCEL_TICK.min(next.saturating_duration_since(Instant::now())));
            }
        }
    }

    /// Waits for the pod and opens the shell in it, logging each step;
    /// `Err` is the reason for the agent log.
    fn open_session(&mut self, log: &mut JobLog<'_>) -> Result<(), KubernetesJobError> {
        if let Err(why) = self.wait_for_pod(log) {
            log::error!("Failed to create pod: {why}");
            log.output(format!("Failed to create pod: {why}\n"));
            return Err(KubernetesJobError::StartPod {
                pod: self.pod_name.clone(),
                why,
            });
        }
        log.output("Pod is ready.\n");
        log.output("Starting a new bash session in the pod...\n");
        let options = ShellOptions {
            home: self.settings.home.clone(),
            env: bridge_env(),
            stopper: PtyCommands::stopper(&self.stop),
            stop_grace: self.settings.stop_grace,
            keep_state: self.settings.debug_name.is_some(),
            ..ShellOptions::default()
        };
        #[cfg(unix)]
        let started = self.start_without_kubectl(&options, log);
        #[cfg(not(unix))]
        let started = None;
        let started = match started {
            Some(started) => started,
            None => Shell::start_inline(&options, &self.launch_kubectl()),
        };
        match started {
            Ok(shell) => self.pty.attach(shell),
            Err(err) => {
                log::error!("Failed to start shell: {err}");
                log.output("Failed to start shell in kubernetes container\n");
                log.output(format!("{err}\n"));
                return Err(KubernetesJobError::Exec {
                    pod: self.pod_name.clone(),
                    error: err,
                });
            }
        }
        log.output("Shell session is ready.\n");
        for (command, label, what) in [
            ("whoami", "User", "user"),
            ("id", "User identity", "user identity"),
            ("pwd", "Working directory", "working directory"),
        ] {
            let (output, outcome) = self.pty.output_of(command);
            if !outcome.passed() {
                log.output(format!("Failed to determine {what}\n"));
                log.output(format!("exit code {} - {output}\n", outcome.code()));
                return Err(KubernetesJobError::Probe {
                    command,
                    pod: self.pod_name.clone(),
                });
            }
            let line = format!("{label}: {}", with_newline(&output));
            log::info!("{}", line.trim_end());
            log.output(line);
        }
        Ok(())
    }

    /// The shell through the agent's own exec bridge (the WebSocket, else
    /// SPDY/3.1); `None` when the bridge cannot run or every way was
    /// refused, after saying so (job log and agent log) and why, so
    /// `kubectl exec` gets its turn.
    #[cfg(unix)]
    fn start_without_kubectl(
        &self,
        options: &ShellOptions,
        log: &mut JobLog<'_>,
    ) -> Option<Result<Shell, ShellError>> {
        let report = ReportFile::create();
        let launch = self.launch_bridge(report.as_ref().map(|r| r.path.as_path()))?;
        let started = Shell::start_inline(options, &launch);
        let report = report.map(|r| r.take()).unwrap_or_default();
        let reasons: Vec<&str> = report.refused.iter().map(|(_, why)| why.as_str()).collect();
        match started {
            Ok(shell) => {
                if let Some(protocol) = &report.using {
                    if reasons.is_empty() {
                        log::info!("Exec into pod {} over {protocol}", self.pod_name);
                    } else {
                        log::info!(
                            "Exec into pod {} over {protocol}: {}",
                            self.pod_name,
                            reasons.join("; ")
                        );
                    }
                }
                Some(Ok(shell))
            }
            Err(ShellError::Start { message }) if message.contains(kubernetes::REFUSED) => {
                let why = if reasons.is_empty() {
                    message
                        .split(kubernetes::REFUSED)
                        .nth(1)
                        .unwrap_or("")
                        .trim_start_matches(':')
                        .trim()
                        .to_string()
                } else {
                    reasons.join("; ")
                };
                log::warn!(
                    "Exec into pod {} without kubectl was refused ({why}): \
                     falling back to kubectl exec",
                    self.pod_name
                );
                log.output(format!(
                    "Exec without kubectl was refused ({why}); trying kubectl exec\n"
                ));
                None
            }
            Err(err) => Some(Err(err)),
        }
    }

    /// The agent's own exec bridge (`kubernetes::exec_bridge`: the pod's
    /// exec subresource over a WebSocket or SPDY/3.1, no kubectl) in the
    /// shell's PTY, telling `report` how it went; `None` when the agent
    /// cannot find its own binary.
    #[cfg(unix)]
    fn launch_bridge(&self, report: Option<&std::path::Path>) -> Option<Launch> {
        let exe = std::env::current_exe().ok()?;
        let target = |report, tty| {
            kubernetes::bridge_argv(
                &exe,
                report,
                tty,
                &self.config.namespace,
                &self.pod_name,
                "main",
            )
        };
        // At a stop with a grace period: the far stop, through the bridge.
        let mut far_stop_argv = target(None, false);
        far_stop_argv.extend([
            "sh".into(),
            "-c".into(),
            far_stop_script(self.settings.stop_grace, true).into(),
        ]);
        let mut argv = target(report, true);
        argv.extend(["bash".into(), "--login".into()]);
        Some(Launch {
            argv,
            scratch_parent: self.settings.tmp_dir.clone(),
            cd: None,
            far_stop: far_stop(far_stop_argv, bridge_env()),
        })
    }

    /// `kubectl exec -it` into the pod: the last resort, for a server that
    /// refuses both the WebSocket and SPDY.
    fn launch_kubectl(&self) -> Launch {
        Launch {
            argv: [
                "kubectl",
                "exec",
                "-it",
                "-n",
                &self.config.namespace,
                &self.pod_name,
                "-c",
                "main",
                "--",
                "bash",
                "--login",
            ]
            .iter()
            .map(Into::into)
            .collect(),
            scratch_parent: self.settings.tmp_dir.clone(),
            cd: None,
            far_stop: None,
        }
    }

    /// Moves one job file from the mount to its place; the error is the
    /// step's exit code and line.
    fn inject_file(&mut self, file: &File) -> Result<(), FileFailure> {
        let dest = if file.path.starts_with('/') || file.path.starts_with('~') {
            file.path.clone()
        } else {
            format!("~/{}", file.path)
        };
        let parent = match dest.rfind('/') {
            Some(0) => "/".to_string(),
            Some(at) => dest[..at].to_string(),
            None => dest.clone(),
        };
        let fail = |outcome: Outcome, message: String| (outcome.code().max(1), message);
        let (output, outcome) = self
            .pty
            .output_of(&format!("mkdir -p {}", bash_path(&parent)));
        if !outcome.passed() {
            return Err(fail(
                outcome,
                format!(
                    "Error injecting file {dest}: failed to created parent directory {parent}: {output}"
                ),
            ));
        }
        let source = format!("{}/{}", self.injected_dir, kubernetes::file_key(&file.path));
        let (output, outcome) =
            self.pty
                .output_of(&format!("cp {} {}", shell_quote(&source), bash_path(&dest)));
        if !outcome.passed() {
            return Err(fail(
                outcome,
                format!("Error injecting file {dest}: {output}"),
            ));
        }
        let mode = file.parse_mode().map_err(|e| {
            (
                1,
                format!(
                    "Error injecting file {dest}: error setting file mode {}: {e}",
                    file.mode
                ),
            )
        })?;
        let (output, outcome) = self
            .pty
            .output_of(&format!("chmod {mode:o} {}", bash_path(&dest)));
        if !outcome.passed() {
            return Err(fail(
                outcome,
                format!(
                    "Error injecting file {dest}: error setting file mode {}: {output}",
                    file.mode
                ),
            ));
        }
        Ok(())
    }

    /// Writes `created` to the journal (outside a cluster), before the
    /// call that creates the newest: a run killed in between leaves a name
    /// the next one deletes (a 404 then).
    fn record_created(&self) {
        if let Some(journal) = &self.journal {
            let entries: Vec<(&str, &str)> =
                self.created.iter().map(|(r, n)| (*r, n.as_str())).collect();
            if let Err(e) = journal.write(&entries) {
                log::warn!("Cannot record the job's Kubernetes objects for a later cleanup: {e}");
            }
        }
    }

    /// Deletes what `prepare` created, the pod first (as Go does); errors
    /// are logged, as there is nobody left to tell, and what could not be
    /// deleted stays in the journal for the next run.
    fn delete_resources(&mut self) {
        let Some(client) = self.client.as_ref() else {
            return;
        };
        let mut created = std::mem::take(&mut self.created);
        // The pod, then the secrets in the order they were made.
        created.sort_by_key(|(resource, _)| *resource != "pods");
        for (resource, name) in created {
            match client.delete(resource, &name) {
                Ok(()) => log::info!("Deleted {resource}/{name}"),
                Err(e) if e.status() == Some(404) => {}
                Err(e) => {
                    log::error!("Error deleting {resource} '{name}': {e}");
                    self.created.push((resource, name));
                }
            }
        }
        self.record_created();
    }
}

/// Why a Kubernetes job could not be prepared or started; `Display` is
/// the job log's (and the agent log's) line.
#[derive(Debug)]
pub enum KubernetesJobError {
    /// The job id cannot be part of an object name.
    BadJobId {
        job_id: String,
    },
    CreateClient(kubernetes::KubeError),
    /// `--kubernetes-pod-spec`'s config map cannot be read.
    GetPodSpec {
        name: String,
        error: kubernetes::KubeError,
    },
    /// The config map is not a usable pod spec.
    LoadPodSpec(kubernetes::PodSpecError),
    BuildPod(kubernetes::PodSpecError),
    BuildPullSecret {
        name: String,
        error: kubernetes::PodSpecError,
    },
    BuildEnvSecret(kubernetes::PodSpecError),
    /// The job was stopped before the next object was created.
    Stopped,
    NoClient,
    CreateEnvSecret(kubernetes::KubeError),
    CreatePullSecret(kubernetes::KubeError),
    CreatePod(kubernetes::KubeError),
    /// The pod never became ready.
    StartPod {
        pod: String,
        why: PodStartError,
    },
    /// No shell in the pod (neither the exec bridge nor kubectl).
    Exec {
        pod: String,
        error: ShellError,
    },
    /// A first command in the new shell (`whoami`, `id`, `pwd`) failed.
    Probe {
        command: &'static str,
        pod: String,
    },
}

impl std::fmt::Display for KubernetesJobError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        use KubernetesJobError::*;
        match self {
            BadJobId { job_id } => write!(
                f,
                "Failed to create pod: job id '{job_id}' cannot be part of a Kubernetes object name"
            ),
            CreateClient(e) => write!(f, "Failed to create the Kubernetes client: {e}"),
            GetPodSpec { name, error } => write!(
                f,
                "Failed to load pod spec: error finding configmap '{name}': {error}"
            ),
            LoadPodSpec(e) => write!(f, "Failed to load pod spec: {e}"),
            BuildPod(e) => write!(
                f,
                "Failed to create pod: error building pod spec: \
                 error building containers for pod spec: {e}"
            ),
            BuildPullSecret { name, error } => write!(
                f,
                "Failed to create temporary image pull secret: error building image \
                 pull secret spec for '{name}': {error}"
            ),
            BuildEnvSecret(e) => write!(f, "Failed to create environment secret: {e}"),
            CreateEnvSecret(e) => write!(f, "Failed to create environment secret: {e}"),
            Stopped => f.write_str("the job was stopped"),
            NoClient => f.write_str("no Kubernetes client"),
            CreatePullSecret(e) => write!(f, "Failed to create temporary image pull secret: {e}"),
            CreatePod(e) => write!(f, "Failed to create pod: {e}"),
            StartPod { pod, why } => write!(f, "pod {pod} did not start: {why}"),
            Exec { pod, error } => write!(f, "exec into {pod} failed: {error}"),
            Probe { command, pod } => write!(f, "'{command}' failed in pod {pod}"),
        }
    }
}

impl std::error::Error for KubernetesJobError {}

/// Why the job's pod never became ready (the reason after "Failed to
/// create pod: " in the job log).
#[derive(Debug)]
pub enum PodStartError {
    NoClient,
    Stopped,
    /// The pod will never run the job: `pod_progress`'s line.
    Finished {
        reason: String,
    },
    /// Reading the pod failed in a way waiting will not mend.
    GetPod(kubernetes::KubeError),
    /// Not ready by `--kubernetes-pod-start-timeout`; `last` is the last
    /// waiting line.
    TimedOut {
        pod: String,
        secs: u64,
        last: String,
    },
}

impl std::fmt::Display for PodStartError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            PodStartError::NoClient => f.write_str("no Kubernetes client"),
            PodStartError::Stopped => f.write_str("the job was stopped"),
            PodStartError::Finished { reason } => f.write_str(reason),
            PodStartError::GetPod(e) => write!(f, "{e}"),
            PodStartError::TimedOut { pod, secs, last } => {
                write!(
                    f,
                    "pod '{pod}' was not ready within {secs}s - giving up: {last}"
                )
            }
        }
    }
}

impl Executor for KubernetesExecutor<'_> {
    fn prepare(&mut self, log: &mut JobLog<'_>) -> Result<(), SetupError> {
        let started_at = log.started(PREPARE_DIRECTIVE);
        let result = self.create_resources();
        if let Err(message) = &result {
            log::error!("{message}");
            log.output(format!("{message}\n"));
        }
        log.finished(PREPARE_DIRECTIVE, i32::from(result.is_err()), started_at);
        result.map_err(SetupError::Kubernetes)
    }

    fn start(&mut self, log: &mut JobLog<'_>) -> Result<(), SetupError> {
        let started_at = log.started(START_DIRECTIVE);
        let result = self.open_session(log);
        log.finished(START_DIRECTIVE, i32::from(result.is_err()), started_at);
        result.map_err(SetupError::Kubernetes)
    }

    /// The first export of the job's own vars sources the `.env` mounted
    /// from the job's secret, so the values never cross the PTY; later
    /// ones (`SEMAPHORE_JOB_RESULT`) are typed as `export` lines.
    fn export_env(&mut self, vars: &BTreeMap<String, Vec<u8>>, log: &mut JobLog<'_>) -> Outcome {
        if std::mem::take(&mut self.env_file_pending) && vars == self.env {
            let command = format!("source {}/{}", self.injected_dir, kubernetes::ENV_KEY);
            return self.pty.run_quiet(&command, log);
        }
        let content = env_file_content(vars);
        let command = String::from_utf8_lossy(&content);
        self.pty.run_quiet(&command, log)
    }

    /// As the request gives it: bash in the pod places it.
    fn file_destination(&self, path: &str) -> String {
        path.to_string()
    }

    fn write_file(
        &mut self,
        file: &File,
        _dest: &str,
        _log: &mut JobLog<'_>,
    ) -> Result<(), FileFailure> {
        self.inject_file(file)
            .inspect_err(|(_, message)| log::error!("{message}"))
    }

    fn commands(&mut self) -> &mut dyn Commands {
        &mut self.pty
    }

    /// The pod's main container, reached through the agent's own exec
    /// bridge with what it needs of the agent's environment to find the
    /// cluster.
    fn debug_place(&self) -> Option<crate::debug_socket::Place> {
        let mut env: Vec<(String, String)> = crate::child_env::vars()
            .into_iter()
            .filter_map(|(name, value)| Some((name.into_string().ok()?, value.into_string().ok()?)))
            .filter(|(name, _)| DEBUG_BRIDGE_VARS.contains(&name.as_str()))
            .collect();
        env.extend(bridge_env());
        Some(crate::debug_socket::Place::Pod {
            namespace: self.config.namespace.clone(),
            pod: self.pod_name.clone(),
            container: "main".to_string(),
            state: self.pty.state_file(),
            env,
        })
    }

    fn close(&mut self) {
        self.cancel.store(true, Ordering::SeqCst);
        self.pty.close();
        self.delete_resources();
    }
}

impl Drop for KubernetesExecutor<'_> {
    fn drop(&mut self) {
        self.close();
    }
}

/// The file the exec bridge reports through (which protocol, what was
/// refused): made empty and private by the agent, removed once read.
#[cfg(unix)]
struct ReportFile {
    path: std::path::PathBuf,
}

#[cfg(unix)]
impl ReportFile {
    fn create() -> Option<ReportFile> {
        let dir = crate::private_tmp::dir().ok()?;
        let path = dir.join(format!("exec-report-{:016x}", crate::random::u64()));
        crate::private_tmp::create_private(&path, 0o600).ok()?;
        Some(ReportFile { path })
    }

    fn take(self) -> kubernetes::ExecReport {
        let text = std::fs::read_to_string(&self.path).unwrap_or_default();
        kubernetes::ExecReport::parse(&text)
    }
}

#[cfg(unix)]
impl Drop for ReportFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

/// `--kubernetes-labels` and the agent's name ([`kubernetes::AGENT_LABEL`]).
fn job_labels(config: &KubernetesConfig) -> Vec<(String, String)> {
    let mut labels = config.labels.clone();
    let value = kubernetes::agent_label_value(&config.agent_name);
    if !value.is_empty() && !labels.iter().any(|(k, _)| k == kubernetes::AGENT_LABEL) {
        labels.push((kubernetes::AGENT_LABEL.to_string(), value));
    }
    labels
}

/// The agent's own pod when it runs in one in `namespace` (looked up once
/// per process): the owner of every job object, so Kubernetes deletes
/// them when the agent's pod goes, however the agent died.
fn owner_pod(namespace: &str) -> Option<&'static kubernetes::OwnerPod> {
    static OWNER: OnceLock<Option<kubernetes::OwnerPod>> = OnceLock::new();
    let owner = OWNER.get_or_init(|| {
        let owner = kubernetes::OwnerPod::discover();
        match &owner {
            Some(pod) => log::info!(
                "Running in pod {}/{}: job pods and secrets are owned by it",
                pod.namespace,
                pod.name
            ),
            None => log::info!(
                "Not running in a pod (no pod in a service account token): \
                 job pods and secrets have no owner"
            ),
        }
        owner
    });
    match owner {
        Some(pod) if pod.namespace == namespace => Some(pod),
        Some(pod) => {
            log::warn!(
                "The agent's pod is in namespace {}, the job's in {namespace}: \
                 the job's objects cannot be owned by it",
                pod.namespace
            );
            None
        }
        None => None,
    }
}

fn owned_by(object: &mut serde_json::Value, owner: Option<&kubernetes::OwnerPod>) {
    if let Some(owner) = owner {
        object["metadata"]["ownerReferences"] = serde_json::json!([owner.reference()]);
    }
}

/// Once per process, before the first job's objects: deletes what an
/// earlier run under the same agent name left (an agent outside a cluster
/// has no owner to do it). That needs `list`, which the executor's Role
/// does not grant; without it the agent says so once and goes on.
fn delete_leftovers_once(client: &Client, agent: &str, journal: Option<&kubernetes::Journal>) {
    static DONE: std::sync::Once = std::sync::Once::new();
    if agent.is_empty() {
        return;
    }
    DONE.call_once(|| {
        if let Some(journal) = journal {
            delete_journalled(client, agent, journal);
        }
        delete_labelled(client, agent);
    });
}

/// Deletes the objects the journal names (no `list` needed).
fn delete_journalled(client: &Client, agent: &str, journal: &kubernetes::Journal) {
    let mut kept = Vec::new();
    for (resource, name) in journal.read() {
        match client.delete(&resource, &name) {
            Ok(()) => log::info!("Deleted {resource}/{name}, left by an earlier run of {agent}"),
            Err(e) if e.status() == Some(404) => {}
            Err(e) => {
                log::warn!("Could not delete {resource}/{name}, left by an earlier run: {e}");
                kept.push((resource, name));
            }
        }
    }
    let kept: Vec<(&str, &str)> = kept.iter().map(|(r, n)| (r.as_str(), n.as_str())).collect();
    if let Err(e) = journal.write(&kept) {
        log::warn!("Cannot update the record of earlier Kubernetes objects: {e}");
    }
}

/// Deletes what carries the agent's label, where the RBAC lets it list.
fn delete_labelled(client: &Client, agent: &str) {
    match kubernetes::delete_leftovers(client, agent) {
        Ok(0) => {}
        Ok(n) => log::info!("Deleted {n} objects an earlier run of {agent} left"),
        Err(e) if e.status() == Some(403) => log::info!(
            "Not looking for objects an earlier run of {agent} left: \
             the Role grants no list ({e})"
        ),
        Err(e) => log::warn!("Could not look for objects an earlier run of {agent} left: {e}"),
    }
}

fn with_newline(text: &str) -> String {
    if text.ends_with('\n') {
        text.to_string()
    } else {
        format!("{text}\n")
    }
}

/// A job file path for bash: a leading `~` or `~/` stays unquoted so bash
/// expands it to the pod user's home; the rest is quoted.
fn bash_path(path: &str) -> String {
    if path == "~" {
        return "~".to_string();
    }
    match path.strip_prefix("~/") {
        Some("") => "~/".to_string(),
        Some(rest) => format!("~/{}", shell_quote(rest)),
        None => shell_quote(path),
    }
}

/// A DNS subdomain as Kubernetes names objects: at most 253 lower-case
/// letters, digits, `-` and `.`, starting and ending with an alphanumeric.
fn is_object_name(name: &str) -> bool {
    let bytes = name.as_bytes();
    name.len() <= 253
        && bytes
            .iter()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'-' | b'.'))
        && bytes.first().is_some_and(u8::is_ascii_alphanumeric)
        && bytes.last().is_some_and(u8::is_ascii_alphanumeric)
}

/// Where the job's secret is mounted in the main container; test builds
/// let tests move it (`SEMAPHORE_AGENT_TEST_KUBERNETES_INJECTED_DIR`), as
/// their stand-in "pod" is a local bash that cannot have `/tmp/injected`.
fn injected_dir() -> String {
    crate::test_knobs::text("KUBERNETES_INJECTED_DIR")
        .unwrap_or_else(|| kubernetes::INJECTED_DIR.to_string())
}

/// What the exec bridge needs on top of the agent's filtered environment
/// (which drops every `SEMAPHORE_AGENT_*`): test builds pass on the test
/// service account directory, so the bridge finds the same cluster.
/// The variables of the agent's environment with which the exec bridge
/// finds the cluster (`kubernetes::Client::discover`); a debug session's
/// bridge gets them too.
const DEBUG_BRIDGE_VARS: [&str; 4] = [
    "KUBECONFIG",
    "KUBERNETES_SERVICE_HOST",
    "KUBERNETES_SERVICE_PORT",
    "HOME",
];

fn bridge_env() -> Vec<(String, String)> {
    match crate::test_knobs::path("SERVICE_ACCOUNT_DIR") {
        Some(dir) => vec![(
            "SEMAPHORE_AGENT_TEST_SERVICE_ACCOUNT_DIR".to_string(),
            dir.display().to_string(),
        )],
        None => Vec::new(),
    }
}

/// The time between looks at a starting pod; test builds let tests
/// shorten it (`SEMAPHORE_AGENT_TEST_KUBERNETES_POLL_MS`).
fn poll_interval() -> Duration {
    crate::test_knobs::millis("KUBERNETES_POLL_MS").unwrap_or(POLL_INTERVAL)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_paths_keep_the_tilde_unquoted() {
        assert_eq!(bash_path("~/a b/c"), "~/'a b/c'");
        assert_eq!(bash_path("~"), "~");
        assert_eq!(bash_path("/etc/x y"), "'/etc/x y'");
    }

    #[test]
    fn job_ids_must_make_object_names() {
        assert!(is_object_name(
            "semaphore-job-4e1a0c9e-0000-4000-8000-000000000000-secret"
        ));
        for bad in [
            "semaphore-job-x/exec",
            "semaphore-job-X",
            "semaphore-job-",
            "a b",
        ] {
            assert!(!is_object_name(bad), "{bad}");
        }
        let config = Arc::new(KubernetesConfig::default());
        let request = JobRequest {
            job_id: "../../secrets/x".into(),
            ..JobRequest::default()
        };
        let stop = Stop::new();
        let env = JobEnv::new();
        let mut executor =
            KubernetesExecutor::new(&request, &env, &JobOptions::default(), &config, &stop);
        let err = executor.create_resources().unwrap_err();
        let err = err.to_string();
        assert!(err.contains("'../../secrets/x'"), "{err}");
        assert!(executor.client.is_none());
    }

    #[test]
    fn a_stop_before_prepare_creates_nothing() {
        let stop = Stop::new();
        let config = Arc::new(KubernetesConfig::default());
        let request = JobRequest {
            job_id: "j".into(),
            ..JobRequest::default()
        };
        let env = JobEnv::new();
        let mut executor =
            KubernetesExecutor::new(&request, &env, &JobOptions::default(), &config, &stop);
        stop.stop();
        assert!(executor.cancelled());
        let mut events = Vec::new();
        let mut log = JobLog::new(&mut events);
        assert!(executor.wait_for_pod(&mut log).is_err());
        assert!(executor.created.is_empty());
        executor.close();
    }
}
