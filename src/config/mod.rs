//! Configuration: the `start` settings from flags, `SEMAPHORE_AGENT_*`
//! environment variables and the Go agent's YAML `--config-file`, merged with
//! precedence flag > environment > file and validated into a typed `Config`.
//!
//! Two stages, as in ripgrep: `raw` turns each source into a `RawConfig` of
//! untyped text and merges them; `Config::validate` is the only place a value
//! is judged and the only place that turns text into real types. This module
//! must never log or put into an error the token or an env var's value;
//! `Config`'s `Debug` is redacted for the same reason. It does not check that
//! hook scripts exist: they are looked up when a job runs, as in Go.

mod kubernetes;
mod name;
mod raw;

use std::fmt;
use std::path::PathBuf;

pub use crate::keys::{Key, Kind, Secrecy, ENV_PREFIX};
pub use name::{is_request_uri, is_valid_name, random_name};
pub use raw::{split_list_string, yaml_kind, Origin, RawConfig, RawSetting, RawValue};

use crate::cli::{parse_bool, RunArgs, StartArgs};
use crate::job::{JobOptions, Settings};

/// When to upload the job log as a job artifact (`upload-job-logs`): the
/// log pusher's own policy type, under the config key's name.
pub use crate::logs::UploadPolicy as UploadJobLogs;

/// The validated `start` configuration. `Debug` is redacted; use
/// `redacted_summary()` to log it.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Config {
    /// Host (and optional port) of the control plane, without scheme.
    pub endpoint: String,
    /// The registration token. Secret: never log it.
    pub token: String,
    /// The resolved agent name (from `name`, `name-from-env` or random).
    pub name: String,
    /// The variable `name` was read from, "" if not used.
    pub name_from_env: String,
    pub no_https: bool,
    pub shutdown_hook_path: Option<PathBuf>,
    pub pre_job_hook_path: Option<PathBuf>,
    pub post_job_hook_path: Option<PathBuf>,
    pub disconnect_after_job: bool,
    /// "" unless a specific job was requested.
    pub job_id: String,
    /// Seconds; 0 means never disconnect for idleness.
    pub disconnect_after_idle_timeout: u64,
    /// `NAME=VALUE` pairs exported in every job. Values are secret.
    pub env_vars: Vec<(String, String)>,
    /// `host:dest` entries, already checked for their shape.
    pub files: Vec<String>,
    pub fail_on_missing_files: bool,
    pub upload_job_logs: UploadJobLogs,
    pub fail_on_pre_job_hook_error: bool,
    pub source_pre_job_hook: bool,
    /// Seconds.
    pub interruption_grace_period: u64,
    /// Env var name globs whose values are masked in job logs; empty turns
    /// masking of env vars off (the agent's tokens are always masked).
    pub redact_env_vars: Vec<String>,
    /// `HOST:PORT` of the health and metrics server; `None` = off.
    pub health_address: Option<String>,
    /// The agent log's line format.
    pub log_format: LogFormat,
    /// Messages about accepted-but-ignored settings (none today; kept
    /// for keys accepted only for compatibility).
    pub warnings: Vec<String>,
    /// `--kubernetes-executor` and its settings; `None` when off.
    pub kubernetes: Option<crate::kubernetes::KubernetesConfig>,
    /// `--gpus`; `None`: no GPU handling at all.
    pub gpus: Option<GpuSelection>,
    /// `--gpu-health-command`: run through `sh -c` instead of `nvidia-smi`.
    pub gpu_health_command: Option<String>,
    /// `--job-memory-limit` and `--job-cpus`.
    pub job_limits: JobLimits,
    /// `--job-stop-grace-period`; `None` is the default (0.5 s).
    pub job_stop_grace_period: Option<std::time::Duration>,
}

pub use crate::shell::gpu::GpuSelection;
pub use crate::shell::JobLimits;

/// The agent log's line format (`log-format`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum LogFormat {
    /// The Go agent's line format.
    #[default]
    Text,
    /// One JSON object per line, for log shippers.
    Json,
}

impl LogFormat {
    pub const ALLOWED: &'static [&'static str] = &["text", "json"];

    pub fn parse(s: &str) -> Option<LogFormat> {
        match s.trim().to_ascii_lowercase().as_str() {
            "text" => Some(LogFormat::Text),
            "json" => Some(LogFormat::Json),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            LogFormat::Text => "text",
            LogFormat::Json => "json",
        }
    }
}

/// The validated settings of `run`.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct RunConfig {
    pub job_file: PathBuf,
    /// Print the job's events as JSON lines.
    pub json: bool,
    pub env_vars: Vec<(String, String)>,
    pub pre_job_hook_path: Option<PathBuf>,
    pub post_job_hook_path: Option<PathBuf>,
    pub fail_on_pre_job_hook_error: bool,
    pub source_pre_job_hook: bool,
}

/// Everything that can be wrong with the configuration. Messages name the
/// key, the source and the offending value — except the token's and env
/// vars' values, which never appear.
#[derive(Debug)]
pub enum ConfigError {
    ReadFile {
        path: PathBuf,
        source: std::io::Error,
    },
    ParseFile {
        path: PathBuf,
        message: String,
    },
    FileNotAMapping {
        path: PathBuf,
        found: &'static str,
    },
    UnknownKey {
        path: PathBuf,
        key: String,
    },
    InvalidFileValue {
        path: PathBuf,
        key: &'static str,
        found: String,
    },
    /// A list where one value was expected, or the reverse.
    WrongType {
        key: &'static str,
        origin: Origin,
        expected: &'static str,
    },
    NotABool {
        key: &'static str,
        value: String,
        origin: Origin,
    },
    NotAnInteger {
        key: &'static str,
        value: String,
        origin: Origin,
    },
    NegativeSeconds {
        key: &'static str,
        value: String,
        origin: Origin,
    },
    JobIdWithoutDisconnectAfterJob {
        origin: Origin,
    },
    InvalidUploadJobLogs {
        value: String,
        origin: Origin,
    },
    InvalidName {
        name: String,
        origin: Origin,
    },
    InvalidNameFromEnv {
        var: String,
        value: String,
    },
    EnvVarWithoutEquals {
        entry: String,
        origin: Origin,
    },
    EnvVarWithoutName {
        index: usize,
        origin: Origin,
    },
    InvalidFileInjection {
        entry: String,
        origin: Origin,
    },
    InvalidKubernetesImageRegex {
        value: String,
        origin: Origin,
        message: String,
    },
    InvalidKubernetesLabel {
        entry: String,
        origin: Origin,
        reason: crate::kubernetes::LabelError,
    },
    InvalidLogFormat {
        value: String,
        origin: Origin,
    },
    InvalidHealthAddress {
        value: String,
        origin: Origin,
    },
    /// A value of the wrong form; `expected` says which form.
    InvalidValue {
        key: &'static str,
        value: String,
        origin: Origin,
        expected: &'static str,
    },
    MissingEndpoint,
    /// `endpoint` names a scheme that contradicts `no-https`, or one the
    /// agent does not speak; `fix` says which setting to use instead.
    EndpointScheme {
        value: String,
        origin: Origin,
        fix: &'static str,
    },
    MissingToken,
    /// `run <pipeline> --parallel` is not a number from 1 to 1000.
    InvalidParallel {
        value: String,
    },
    /// `run <pipeline> --checkout` is neither `worktree` nor `head`.
    InvalidCheckout {
        value: String,
    },
    /// `run <pipeline> --env` is not `NAME=VALUE` with a shell name (the
    /// name only: the value may be a secret).
    InvalidPipelineEnv {
        name: String,
    },
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        use ConfigError::*;
        match self {
            ReadFile { path, source } => {
                write!(f, "cannot read config file {}: {source}", path.display())
            }
            ParseFile { path, message } => {
                write!(f, "invalid YAML in config file {}: {message}", path.display())
            }
            FileNotAMapping { path, found } => write!(
                f,
                "config file {} must be a mapping of option names to values, found {found}",
                path.display()
            ),
            UnknownKey { path, key } => write!(
                f,
                "unrecognized option '{key}' in config file {}",
                path.display()
            ),
            InvalidFileValue { path, key, found } => write!(
                f,
                "option '{key}' in config file {} cannot be {found}",
                path.display()
            ),
            WrongType {
                key,
                origin,
                expected,
            } => write!(f, "option '{key}' ({origin}) must be {expected}"),
            NotABool { key, value, origin } => write!(
                f,
                "option '{key}' ({origin}) must be true or false, not '{value}'"
            ),
            NotAnInteger { key, value, origin } => write!(
                f,
                "option '{key}' ({origin}) must be a whole number of seconds, not '{value}'"
            ),
            NegativeSeconds { key, value, origin } => {
                write!(f, "option '{key}' ({origin}) can't be negative: '{value}'")
            }
            JobIdWithoutDisconnectAfterJob { origin } => write!(
                f,
                "option 'job-id' ({origin}) can only be used together with 'disconnect-after-job'"
            ),
            InvalidUploadJobLogs { value, origin } => write!(
                f,
                "unsupported value '{value}' for 'upload-job-logs' ({origin}); allowed values are: {}",
                UploadJobLogs::ALLOWED.join(", ")
            ),
            InvalidName { name, origin } => write!(
                f,
                "agent name '{name}' ({origin}) must have between {} and {} characters or be a URL; it has {}",
                name::MIN_NAME_LEN,
                name::MAX_NAME_LEN,
                name.len()
            ),
            InvalidNameFromEnv { var, value } => write!(
                f,
                "agent name '{value}' read from environment variable {var} (option 'name-from-env') \
                 must have between {} and {} characters or be a URL; it has {}",
                name::MIN_NAME_LEN,
                name::MAX_NAME_LEN,
                value.len()
            ),
            EnvVarWithoutEquals { entry, origin } => write!(
                f,
                "'env-vars' entry '{entry}' ({origin}) is not NAME=VALUE"
            ),
            EnvVarWithoutName { index, origin } => write!(
                f,
                "'env-vars' entry #{} ({origin}) has an empty name",
                index + 1
            ),
            InvalidFileInjection { entry, origin } => write!(
                f,
                "'files' entry '{entry}' ({origin}) is not host-path:destination"
            ),
            InvalidKubernetesImageRegex {
                value,
                origin,
                message,
            } => write!(
                f,
                "'kubernetes-allowed-images' entry '{value}' ({origin}) is not a valid regex: {message}"
            ),
            InvalidKubernetesLabel {
                entry,
                origin,
                reason,
            } => write!(
                f,
                "'kubernetes-labels' entry '{entry}' ({origin}) is not a valid label: {reason}"
            ),
            InvalidLogFormat { value, origin } => write!(
                f,
                "unsupported value '{value}' for 'log-format' ({origin}); allowed values are: {}",
                LogFormat::ALLOWED.join(", ")
            ),
            InvalidHealthAddress { value, origin } => write!(
                f,
                "'health-address' ({origin}) must be HOST:PORT with a port from 1 to 65535, not '{value}'"
            ),
            InvalidValue {
                key,
                value,
                origin,
                expected,
            } => write!(f, "option '{key}' ({origin}) must be {expected}, not '{value}'"),
            EndpointScheme { value, origin, fix } => write!(
                f,
                "'endpoint' ({origin}) is '{}': {fix}",
                value.escape_debug()
            ),
            MissingEndpoint => f.write_str(
                "the Semaphore endpoint was not specified \
                 (option 'endpoint', SEMAPHORE_AGENT_ENDPOINT or --endpoint)",
            ),
            MissingToken => f.write_str(
                "the agent registration token was not specified \
                 (option 'token', SEMAPHORE_AGENT_TOKEN or --token)",
            ),
            InvalidParallel { value } => {
                write!(f, "--parallel {value:?}: give a number from 1 to 1000")
            }
            InvalidCheckout { value } => write!(
                f,
                "--checkout {value:?}: give `worktree` (with uncommitted changes) or `head`"
            ),
            InvalidPipelineEnv { name } => {
                write!(f, "--env {name}: give NAME=VALUE with a valid name")
            }
        }
    }
}

impl std::error::Error for ConfigError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            ConfigError::ReadFile { source, .. } => Some(source),
            _ => None,
        }
    }
}

/// Builds the `start` configuration: the `--config-file` (if given), then the
/// environment through `env`, then the flags; validates the result and logs
/// a warning for each accepted-but-ignored setting.
pub fn load_start_config(
    args: &StartArgs,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<Config, ConfigError> {
    let file = match &args.config_file {
        Some(path) => RawConfig::from_file(path)?,
        None => RawConfig::default(),
    };
    let raw = file
        .merge(RawConfig::from_env(env))
        .merge(RawConfig::from_start_args(args));
    let config = Config::validate(&raw, env)?;
    for warning in &config.warnings {
        log::warn!("{warning}");
    }
    Ok(config)
}

/// Builds the `run` configuration from its flags alone: a local run does not
/// read the `start` environment variables or a config file.
impl Config {
    /// The one job-settings value of every job this agent runs, handed down
    /// as is (the listener builds it once).
    pub fn job_settings(&self) -> Settings {
        Settings {
            options: self.job_options(),
            redact_env_vars: self.redact_env_vars.clone(),
            upload: self.upload_job_logs,
        }
    }

    fn job_options(&self) -> JobOptions {
        JobOptions {
            home: job_home(),
            tmp_dir: std::env::temp_dir(),
            env_vars: self.env_vars.clone(),
            pre_job_hook_path: self.pre_job_hook_path.clone(),
            source_pre_job_hook: self.source_pre_job_hook,
            fail_on_pre_job_hook_error: self.fail_on_pre_job_hook_error,
            post_job_hook_path: self.post_job_hook_path.clone(),
            files: self.files.clone(),
            fail_on_missing_files: self.fail_on_missing_files,
            kubernetes: self.kubernetes.clone().map(std::sync::Arc::new),
            // `all` is resolved by the listener's first GPU check.
            gpus: match &self.gpus {
                Some(GpuSelection::Ids(ids)) => Some(ids.clone()),
                _ => None,
            },
            limits: self.job_limits,
            stop_grace: self.job_stop_grace_period,
            debug_name: Some(self.name.clone()),
        }
    }
}

impl RunConfig {
    /// The job settings of `run` (its job, or each job of its pipeline):
    /// the host executor only, without `--files` or Kubernetes; the default
    /// `redact-env-vars` patterns (a local job's env vars come from the
    /// user's own secrets, so its output is masked as under `start`); no
    /// upload.
    pub fn job_settings(&self) -> Settings {
        Settings {
            options: self.job_options(),
            redact_env_vars: crate::mask::DEFAULT_PATTERNS
                .iter()
                .map(|p| p.to_string())
                .collect(),
            upload: UploadJobLogs::Never,
        }
    }

    fn job_options(&self) -> JobOptions {
        JobOptions {
            home: job_home(),
            tmp_dir: std::env::temp_dir(),
            env_vars: self.env_vars.clone(),
            pre_job_hook_path: self.pre_job_hook_path.clone(),
            source_pre_job_hook: self.source_pre_job_hook,
            fail_on_pre_job_hook_error: self.fail_on_pre_job_hook_error,
            post_job_hook_path: self.post_job_hook_path.clone(),
            files: Vec::new(),
            fail_on_missing_files: false,
            kubernetes: None,
            gpus: None,
            limits: JobLimits::default(),
            stop_grace: None,
            debug_name: None,
        }
    }
}

/// A job's HOME and starting directory: the agent user's home (`$HOME`;
/// `%USERPROFILE%` on Windows), else the current directory, else `/`.
fn job_home() -> PathBuf {
    match crate::platform::home_var() {
        Some(home) if !home.is_empty() => home.into(),
        _ => std::env::current_dir().unwrap_or_else(|_| "/".into()),
    }
}

/// What `run <pipeline.yml>` was asked to do, checked.
#[derive(Debug, Clone, Default)]
pub struct PipelineRun {
    pub file: PathBuf,
    pub json: bool,
    pub list: bool,
    /// `--block`: these blocks (and, unless `only`, what they depend on).
    pub blocks: Vec<String>,
    pub only: bool,
    /// `--job`: only jobs of these (expanded, or base) names.
    pub jobs: Vec<String>,
    /// `--parallel`; 0 means one per core.
    pub parallel: usize,
    pub secrets_file: Option<PathBuf>,
    pub allow_missing_secrets: bool,
    /// `--env NAME=VALUE`.
    pub env: Vec<(String, String)>,
    pub keep_going: bool,
    /// `--verbose`: every setup line of every job.
    pub verbose: bool,
    /// `--checkout head`: `checkout` gives the commit only, without
    /// uncommitted changes.
    pub checkout_head: bool,
    /// `--base`: the default branch for `change_in`.
    pub base: Option<String>,
    /// The job settings of every job (`RunConfig::job_settings`); the
    /// pipeline gives each job a HOME of its own.
    pub settings: Settings,
}

/// Builds `run <pipeline.yml>`'s settings from its flags: the `run`
/// settings of its jobs, then the pipeline's own options, checked.
pub fn load_pipeline_run(args: &RunArgs) -> Result<PipelineRun, ConfigError> {
    let settings = load_run_config(args)?.job_settings();
    let parallel = match &args.parallel {
        None => 0,
        Some(p) => match p.parse::<usize>() {
            Ok(n) if (1..=1000).contains(&n) => n,
            _ => return Err(ConfigError::InvalidParallel { value: p.clone() }),
        },
    };
    let checkout_head = match args.checkout.as_deref() {
        None | Some("worktree") => false,
        Some("head") => true,
        Some(other) => {
            return Err(ConfigError::InvalidCheckout {
                value: other.to_string(),
            })
        }
    };
    let mut env = Vec::new();
    for item in &args.env {
        match item.split_once('=') {
            Some((name, value)) if crate::request::is_identifier(name) => {
                env.push((name.to_string(), value.to_string()))
            }
            _ => {
                let name = item.split('=').next().unwrap_or_default();
                return Err(ConfigError::InvalidPipelineEnv {
                    name: name.to_string(),
                });
            }
        }
    }
    Ok(PipelineRun {
        file: args.job_file.clone(),
        json: args.json,
        list: args.list,
        blocks: args.block.clone(),
        only: args.only,
        jobs: args.job.clone(),
        parallel,
        secrets_file: args.secrets_file.clone(),
        allow_missing_secrets: args.allow_missing_secrets,
        env,
        keep_going: args.keep_going,
        verbose: args.verbose,
        checkout_head,
        base: args.base.clone(),
        settings,
    })
}

pub fn load_run_config(args: &RunArgs) -> Result<RunConfig, ConfigError> {
    let raw = RawConfig::from_run_args(args);
    Ok(RunConfig {
        job_file: args.job_file.clone(),
        json: args.json,
        env_vars: env_vars(&raw)?,
        pre_job_hook_path: text(&raw, Key::PreJobHookPath)?.map(|(s, _)| PathBuf::from(s)),
        post_job_hook_path: text(&raw, Key::PostJobHookPath)?.map(|(s, _)| PathBuf::from(s)),
        fail_on_pre_job_hook_error: boolean(&raw, Key::FailOnPreJobHookError)?,
        source_pre_job_hook: boolean(&raw, Key::SourcePreJobHook)?,
    })
}

impl Config {
    /// Turns merged raw settings into a `Config`, checking every value.
    /// `env` is consulted only for `name-from-env`. Without any name, a
    /// random one is generated.
    pub fn validate(
        raw: &RawConfig,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<Config, ConfigError> {
        let disconnect_after_job = boolean(raw, Key::DisconnectAfterJob)?;
        let job_id = match text(raw, Key::JobId)? {
            Some((_, origin)) if !disconnect_after_job => {
                return Err(ConfigError::JobIdWithoutDisconnectAfterJob {
                    origin: origin.clone(),
                })
            }
            Some((id, _)) => id,
            None => String::new(),
        };
        let upload_job_logs = match text(raw, Key::UploadJobLogs)? {
            None => UploadJobLogs::parse(Key::UploadJobLogs.default_text()).unwrap_or_default(),
            Some((value, origin)) => match UploadJobLogs::parse(&value) {
                Some(u) => u,
                None => {
                    return Err(ConfigError::InvalidUploadJobLogs {
                        value,
                        origin: origin.clone(),
                    })
                }
            },
        };
        let no_https = boolean(raw, Key::NoHttps)?;
        let endpoint = match text(raw, Key::Endpoint)? {
            Some((value, origin)) => endpoint_host(value, origin, no_https)?,
            None => return Err(ConfigError::MissingEndpoint),
        };
        let (token, token_origin) = text(raw, Key::Token)?.ok_or(ConfigError::MissingToken)?;
        let disconnect_after_idle_timeout = seconds(raw, Key::DisconnectAfterIdleTimeout)?;
        let interruption_grace_period = seconds(raw, Key::InterruptionGracePeriod)?;
        let env_vars = env_vars(raw)?;
        let files = files(raw)?;
        let (name, name_from_env) = agent_name(raw, env)?;
        let kubernetes =
            kubernetes::kubernetes_config(raw, env)?.map(|k| crate::kubernetes::KubernetesConfig {
                agent_name: name.clone(),
                ..k
            });
        let log_format = match text(raw, Key::LogFormat)? {
            None => LogFormat::parse(Key::LogFormat.default_text()).unwrap_or_default(),
            Some((value, origin)) => {
                LogFormat::parse(&value).ok_or_else(|| ConfigError::InvalidLogFormat {
                    value: value.clone(),
                    origin: origin.clone(),
                })?
            }
        };
        let health_address = health_address(raw)?;
        let gpus = match text(raw, Key::Gpus)? {
            None => None,
            Some((value, origin)) => {
                Some(
                    GpuSelection::parse(&value).map_err(|bad| ConfigError::InvalidValue {
                        key: Key::Gpus.name(),
                        value: if bad == value {
                            value.clone()
                        } else {
                            format!("{bad}' in '{value}")
                        },
                        origin: origin.clone(),
                        expected: "'all' or GPU indexes or UUIDs, comma-separated (0,1 or GPU-...)",
                    })?,
                )
            }
        };
        let job_limits = JobLimits {
            memory_bytes: parsed(raw, Key::JobMemoryLimit, parse_size, SIZE_FORM)?,
            cpu_millis: parsed(raw, Key::JobCpus, parse_cpus, CPUS_FORM)?,
        };
        let job_stop_grace_period = parsed(raw, Key::JobStopGracePeriod, parse_grace, GRACE_FORM)?;

        let mut warnings = Vec::new();
        if *token_origin == Origin::Flag {
            // Every local user sees a command line in `ps`.
            warnings.push(
                "the registration token was given with --token, which every local user can \
                 read in the process list; set SEMAPHORE_AGENT_TOKEN or 'token' in the \
                 --config-file instead"
                    .to_string(),
            );
        }
        for &key in Key::ALL.iter().filter(|k| !k.is_supported()) {
            if let Some(setting) = raw.get(key).filter(|s| !raw::is_default(key, s)) {
                warnings.push(format!(
                    "option '{}' ({}) is accepted for compatibility and ignored",
                    key.name(),
                    setting.origin
                ));
            }
        }

        Ok(Config {
            endpoint,
            token,
            name,
            name_from_env,
            no_https,
            shutdown_hook_path: text(raw, Key::ShutdownHookPath)?.map(|(s, _)| PathBuf::from(s)),
            pre_job_hook_path: text(raw, Key::PreJobHookPath)?.map(|(s, _)| PathBuf::from(s)),
            post_job_hook_path: text(raw, Key::PostJobHookPath)?.map(|(s, _)| PathBuf::from(s)),
            disconnect_after_job,
            job_id,
            disconnect_after_idle_timeout,
            env_vars,
            files,
            fail_on_missing_files: boolean(raw, Key::FailOnMissingFiles)?,
            upload_job_logs,
            fail_on_pre_job_hook_error: boolean(raw, Key::FailOnPreJobHookError)?,
            source_pre_job_hook: boolean(raw, Key::SourcePreJobHook)?,
            interruption_grace_period,
            redact_env_vars: match list(raw, Key::RedactEnvVars) {
                None => split_list_string(Key::RedactEnvVars.default_text()),
                Some((items, _)) => items.into_iter().filter(|p| !p.is_empty()).collect(),
            },
            health_address,
            log_format,
            warnings,
            kubernetes,
            gpus,
            gpu_health_command: text(raw, Key::GpuHealthCommand)?.map(|(s, _)| s),
            job_limits,
            job_stop_grace_period,
        })
    }

    /// Every supported setting in table order, one `key: value` per line
    /// (`(none)` for an empty one), redacted as the key table says: the
    /// token shown as `[REDACTED]`, env var names shown but not values.
    pub fn redacted_summary(&self) -> String {
        let mut out = String::new();
        for &key in Key::ALL {
            let Some(value) = self.summary_value(key) else {
                continue;
            };
            let shown = match value {
                Shown::One(v) if v.is_empty() => String::new(),
                Shown::One(v) => key.shown(&v),
                Shown::Many(items) => items
                    .iter()
                    .map(|item| key.shown(item))
                    .collect::<Vec<_>>()
                    .join(", "),
            };
            out.push_str(key.name());
            out.push_str(": ");
            out.push_str(if shown.is_empty() { "(none)" } else { &shown });
            out.push('\n');
        }
        out
    }

    /// The validated value of `key`, unredacted, for the summary; `None`
    /// for a key `Config` does not keep (none today). A
    /// new supported key needs an arm here: a unit test checks that every
    /// supported key is in the summary.
    fn summary_value(&self, key: Key) -> Option<Shown> {
        fn path(p: &Option<PathBuf>) -> Shown {
            Shown::One(
                p.as_ref()
                    .map_or_else(String::new, |p| p.display().to_string()),
            )
        }
        let one = |v: &dyn ToString| Some(Shown::One(v.to_string()));
        // The Kubernetes settings are shown only when the executor is on.
        let kube = |f: fn(&crate::kubernetes::KubernetesConfig) -> String| {
            self.kubernetes.as_ref().map_or_else(String::new, f)
        };
        match key {
            Key::Name => one(&self.name),
            Key::NameFromEnv => one(&self.name_from_env),
            Key::Endpoint => one(&self.endpoint),
            Key::Token => one(&self.token),
            Key::NoHttps => one(&self.no_https),
            Key::ShutdownHookPath => Some(path(&self.shutdown_hook_path)),
            Key::PreJobHookPath => Some(path(&self.pre_job_hook_path)),
            Key::PostJobHookPath => Some(path(&self.post_job_hook_path)),
            Key::DisconnectAfterJob => one(&self.disconnect_after_job),
            Key::JobId => one(&self.job_id),
            Key::DisconnectAfterIdleTimeout => one(&self.disconnect_after_idle_timeout),
            Key::InterruptionGracePeriod => one(&self.interruption_grace_period),
            Key::EnvVars => Some(Shown::Many(
                self.env_vars
                    .iter()
                    .map(|(name, value)| format!("{name}={value}"))
                    .collect(),
            )),
            Key::Files => Some(Shown::Many(self.files.clone())),
            Key::FailOnMissingFiles => one(&self.fail_on_missing_files),
            Key::UploadJobLogs => one(&self.upload_job_logs.as_str()),
            Key::FailOnPreJobHookError => one(&self.fail_on_pre_job_hook_error),
            Key::SourcePreJobHook => one(&self.source_pre_job_hook),
            Key::KubernetesExecutor => one(&self.kubernetes.is_some()),
            Key::KubernetesPodSpec => one(&kube(|k| k.pod_spec.clone().unwrap_or_default())),
            Key::KubernetesAllowedImages => Some(Shown::Many(
                self.kubernetes
                    .as_ref()
                    .map(|k| k.allowed_images.clone())
                    .unwrap_or_default(),
            )),
            Key::KubernetesPodStartTimeout => {
                one(&kube(|k| k.pod_start_timeout.as_secs().to_string()))
            }
            Key::KubernetesLabels => Some(Shown::Many(
                self.kubernetes
                    .as_ref()
                    .map(|k| k.labels.iter().map(|(a, b)| format!("{a}={b}")).collect())
                    .unwrap_or_default(),
            )),
            Key::KubernetesDefaultImage => {
                one(&kube(|k| k.default_image.clone().unwrap_or_default()))
            }
            Key::RedactEnvVars => Some(Shown::Many(self.redact_env_vars.clone())),
            Key::HealthAddress => one(&self.health_address.clone().unwrap_or_default()),
            Key::LogFormat => one(&self.log_format.as_str()),
            Key::Gpus => one(&self
                .gpus
                .as_ref()
                .map(GpuSelection::as_text)
                .unwrap_or_default()),
            Key::GpuHealthCommand => one(&self.gpu_health_command.clone().unwrap_or_default()),
            Key::JobMemoryLimit => one(&self
                .job_limits
                .memory_bytes
                .map(crate::shell::size_text)
                .unwrap_or_default()),
            Key::JobCpus => one(&self
                .job_limits
                .cpu_millis
                .map(crate::shell::cpus_text)
                .unwrap_or_default()),
            Key::JobStopGracePeriod => one(&format!(
                "{} s",
                self.job_stop_grace_period
                    .unwrap_or(std::time::Duration::from_millis(500))
                    .as_secs_f64()
            )),
        }
    }
}

/// A setting's value in the summary, before redaction.
enum Shown {
    One(String),
    Many(Vec<String>),
}

const REDACTED: &str = crate::keys::REDACTED;

fn redacted_env_vars(vars: &[(String, String)]) -> String {
    vars.iter()
        .map(|(name, _)| format!("{name}={REDACTED}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Redacted, so that `{:?}` in a log line or a failed assertion cannot leak
/// the token or env var values.
impl fmt::Debug for Config {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Config {{\n{}}}", self.redacted_summary())
    }
}

impl fmt::Debug for RunConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RunConfig")
            .field("job_file", &self.job_file)
            .field("json", &self.json)
            .field("env_vars", &redacted_env_vars(&self.env_vars))
            .field("pre_job_hook_path", &self.pre_job_hook_path)
            .field("post_job_hook_path", &self.post_job_hook_path)
            .field(
                "fail_on_pre_job_hook_error",
                &self.fail_on_pre_job_hook_error,
            )
            .field("source_pre_job_hook", &self.source_pre_job_hook)
            .finish()
    }
}

/// A single-valued setting; `None` if unset or empty (the Go agent treats
/// `key: ""` as unset, and its installer writes such lines).
fn text(raw: &RawConfig, key: Key) -> Result<Option<(String, &Origin)>, ConfigError> {
    match raw.get(key) {
        None => Ok(None),
        Some(RawSetting {
            value: RawValue::Scalar(s),
            origin,
        }) => Ok((!s.is_empty()).then(|| (s.clone(), origin))),
        Some(RawSetting {
            value: RawValue::List(_),
            origin,
        }) => Err(ConfigError::WrongType {
            key: key.name(),
            origin: origin.clone(),
            expected: "a single value, not a list",
        }),
    }
}

fn boolean(raw: &RawConfig, key: Key) -> Result<bool, ConfigError> {
    match text(raw, key)? {
        None => Ok(parse_bool(key.default_text()).unwrap_or(false)),
        Some((value, origin)) => parse_bool(&value).ok_or_else(|| ConfigError::NotABool {
            key: key.name(),
            value,
            origin: origin.clone(),
        }),
    }
}

fn seconds(raw: &RawConfig, key: Key) -> Result<u64, ConfigError> {
    let Some((value, origin)) = text(raw, key)? else {
        return Ok(key.default_text().parse().unwrap_or(0));
    };
    let trimmed = value.trim();
    match trimmed.parse::<i64>() {
        Ok(n) if n < 0 => Err(ConfigError::NegativeSeconds {
            key: key.name(),
            value,
            origin: origin.clone(),
        }),
        Ok(n) => Ok(n.unsigned_abs()),
        Err(_) => trimmed
            .parse::<u64>()
            .map_err(|_| ConfigError::NotAnInteger {
                key: key.name(),
                value,
                origin: origin.clone(),
            }),
    }
}

fn list(raw: &RawConfig, key: Key) -> Option<(Vec<String>, &Origin)> {
    raw.get(key).map(|setting| {
        let items = match &setting.value {
            RawValue::List(items) => items.clone(),
            RawValue::Scalar(s) => split_list_string(s),
        };
        (items, &setting.origin)
    })
}

const SIZE_FORM: &str = "a size such as 512M or 4G (K, M, G, T: powers of 1024; at least 4M)";
const CPUS_FORM: &str = "a number of CPUs greater than 0, such as 0.5 or 2 (at most 3 decimals)";
const GRACE_FORM: &str = "seconds from 0 to 3600, such as 5 or 0.5";

/// A single value turned into a type by `parse`; `None` when unset (or
/// `""`); an error names the key, the value and `form`. A key's default
/// text, when it has one, is parsed the same way.
fn parsed<T>(
    raw: &RawConfig,
    key: Key,
    parse: fn(&str) -> Option<T>,
    form: &'static str,
) -> Result<Option<T>, ConfigError> {
    match text(raw, key)? {
        None => Ok(None),
        Some((value, origin)) => match parse(value.trim()) {
            Some(v) => Ok(Some(v)),
            None => Err(ConfigError::InvalidValue {
                key: key.name(),
                value,
                origin: origin.clone(),
                expected: form,
            }),
        },
    }
}

/// `512M`, `4G`, `1536K`, `2Gi`, `64MB`, or plain bytes; at least 4 MiB
/// (less cannot run a bash).
pub fn parse_size(text: &str) -> Option<u64> {
    let lower = text.to_ascii_lowercase();
    let digits_end = lower
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(lower.len());
    let (number, unit) = lower.split_at(digits_end);
    let number: u64 = number.parse().ok()?;
    let shift = match unit.trim_end_matches('b').trim_end_matches('i') {
        "" => 0,
        "k" => 10,
        "m" => 20,
        "g" => 30,
        "t" => 40,
        _ => return None,
    };
    if unit == "ib" {
        return None;
    }
    let bytes = number.checked_mul(1u64 << shift)?;
    (bytes >= 4 << 20).then_some(bytes)
}

/// Decimal seconds as whole thousandths: `0.5` → 500; `None` for a bad
/// number or more than 3 decimals.
fn thousandths(text: &str) -> Option<u64> {
    let (whole, frac) = text.split_once('.').unwrap_or((text, ""));
    if whole.is_empty() && frac.is_empty() {
        return None;
    }
    if !whole.bytes().all(|b| b.is_ascii_digit())
        || !frac.bytes().all(|b| b.is_ascii_digit())
        || frac.len() > 3
    {
        return None;
    }
    let whole: u64 = if whole.is_empty() {
        0
    } else {
        whole.parse().ok()?
    };
    let frac: u64 = format!("{frac:0<3}").parse().ok()?;
    whole.checked_mul(1000)?.checked_add(frac)
}

/// `--job-cpus`: more than 0, at most 4096 CPUs.
pub fn parse_cpus(text: &str) -> Option<u64> {
    thousandths(text).filter(|&m| m > 0 && m <= 4096 * 1000)
}

/// `--job-stop-grace-period`: 0 to an hour.
fn parse_grace(text: &str) -> Option<std::time::Duration> {
    thousandths(text)
        .filter(|&ms| ms <= 3_600_000)
        .map(std::time::Duration::from_millis)
}

/// `NAME=VALUE` entries, split at the first `=` so a value may contain `=`
/// (the Go agent rejects that; accepting it breaks no working config).
fn env_vars(raw: &RawConfig) -> Result<Vec<(String, String)>, ConfigError> {
    let Some((items, origin)) = list(raw, Key::EnvVars) else {
        return Ok(Vec::new());
    };
    let mut vars = Vec::with_capacity(items.len());
    for (index, entry) in items.into_iter().enumerate() {
        match entry.split_once('=') {
            None => {
                return Err(ConfigError::EnvVarWithoutEquals {
                    entry,
                    origin: origin.clone(),
                })
            }
            Some(("", _)) => {
                return Err(ConfigError::EnvVarWithoutName {
                    index,
                    origin: origin.clone(),
                })
            }
            Some((name, value)) => vars.push((name.to_string(), value.to_string())),
        }
    }
    Ok(vars)
}

/// `host:dest` entries: exactly one `:` with something on both sides.
fn files(raw: &RawConfig) -> Result<Vec<String>, ConfigError> {
    let Some((items, origin)) = list(raw, Key::Files) else {
        return Ok(Vec::new());
    };
    for entry in &items {
        let parts: Vec<&str> = entry.split(':').collect();
        if parts.len() != 2 || parts.iter().any(|p| p.is_empty()) {
            return Err(ConfigError::InvalidFileInjection {
                entry: entry.clone(),
                origin: origin.clone(),
            });
        }
    }
    Ok(items)
}

/// `HOST:PORT` (`[v6]:PORT` too) with a port that can be scraped (not 0).
/// The host is resolved when the server binds, not here: config does not
/// touch the network.
/// The endpoint's host (and port): an `https://` prefix is what the agent
/// does anyway and is dropped, as is a trailing `/`; `http://` is honoured
/// only with `no-https` (and `https://` only without it), so the scheme
/// and the flag never disagree silently (the agent would call
/// `https://http://host/...`); any other scheme or a path is refused.
fn endpoint_host(value: String, origin: &Origin, no_https: bool) -> Result<String, ConfigError> {
    let refuse = |fix: &'static str| ConfigError::EndpointScheme {
        value: value.chars().take(200).collect(),
        origin: origin.clone(),
        fix,
    };
    let lower = value.to_ascii_lowercase();
    let host = if lower.starts_with("https://") {
        if no_https {
            return Err(refuse(
                "it says https:// but no-https is set; drop --no-https (or 'no-https'), \
                 or give the host alone",
            ));
        }
        &value["https://".len()..]
    } else if lower.starts_with("http://") {
        if !no_https {
            return Err(refuse(
                "plain HTTP needs --no-https (SEMAPHORE_AGENT_NO_HTTPS or 'no-https: true'); \
                 give the host alone with it, or drop http:// to use HTTPS",
            ));
        }
        &value["http://".len()..]
    } else if value.contains("://") {
        return Err(refuse(
            "give the host (and port) alone; the agent speaks HTTPS, or HTTP with --no-https",
        ));
    } else {
        value.as_str()
    };
    let host = host.strip_suffix('/').unwrap_or(host);
    if host.is_empty() || host.contains('/') {
        return Err(refuse(
            "give the host (and port) alone, without a path; the agent adds the API path itself",
        ));
    }
    Ok(host.to_string())
}

fn health_address(raw: &RawConfig) -> Result<Option<String>, ConfigError> {
    let Some((value, origin)) = text(raw, Key::HealthAddress)? else {
        return Ok(None);
    };
    let ok = match value.rsplit_once(':') {
        Some((host, port)) => {
            !host.is_empty()
                && !host.chars().any(char::is_whitespace)
                && port.parse::<u16>().is_ok_and(|p| p > 0)
        }
        None => false,
    };
    if ok {
        Ok(Some(value))
    } else {
        Err(ConfigError::InvalidHealthAddress {
            value,
            origin: origin.clone(),
        })
    }
}

/// `name` if set, else the variable named by `name-from-env`, else random.
fn agent_name(
    raw: &RawConfig,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<(String, String), ConfigError> {
    if let Some((name, origin)) = text(raw, Key::Name)? {
        if !is_valid_name(&name) {
            return Err(ConfigError::InvalidName {
                name,
                origin: origin.clone(),
            });
        }
        return Ok((name, String::new()));
    }
    if let Some((var, _)) = text(raw, Key::NameFromEnv)? {
        let value = env(&var).unwrap_or_default();
        if !is_valid_name(&value) {
            return Err(ConfigError::InvalidNameFromEnv { var, value });
        }
        return Ok((value, var));
    }
    Ok((random_name(), String::new()))
}

#[cfg(test)]
mod tests;
