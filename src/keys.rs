//! The one table of `start` configuration keys, and the `Key` type made from
//! it.
//!
//! Each key is declared once, in [`config_keys!`]; its flag (`--name`, in
//! `cli`'s argh struct), its environment variable (`SEMAPHORE_AGENT_NAME`),
//! its YAML key (`name`), whether and how its value is redacted, its default
//! and its `--help` line are all derived from that one row. This module only
//! describes keys: it must not read a source or judge a value (that is
//! `config`), and it depends on nothing else in the crate, so that `cli` and
//! `config` can both build on it.

use std::fmt;

/// Prefix of the environment variables that configure `start`.
pub const ENV_PREFIX: &str = "SEMAPHORE_AGENT_";

/// The type a key's value must have once validated; it also decides the
/// flag's shape (`Bool` is a switch, `List` a repeatable option).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Str,
    Bool,
    Int,
    List,
}

/// How a key's value may be shown in a log line, a `{:?}` or the
/// configuration summary.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Secrecy {
    /// Shown as given.
    Public,
    /// Never shown: `[REDACTED]` instead.
    Secret,
    /// `NAME=VALUE` items: the names are shown, every value is redacted.
    SecretValues,
}

/// What a redacted value is shown as.
pub const REDACTED: &str = "[REDACTED]";

/// The table. It calls `$callback! { rows }` so that each module that needs
/// one thing per key (the `Key` enum here, the argh struct in `cli`) is
/// generated from the same rows.
///
/// One row per key, in the order the Go agent declares its flags (which is
/// also the order of `start --help` and of the configuration summary):
///
/// ```text
/// Variant, field, "yaml-and-flag-name", Kind, supported, Secrecy, "default", "help";
/// ```
///
/// - `field` is the name with `_` for `-` (a unit test checks it), and
///   `Variant` the same in UpperCamelCase.
/// - `supported`: false for keys accepted only so that a Go agent's config
///   keeps working; setting one to a non-default value logs a warning.
/// - `"default"`: the value the key has when no source sets it, as text.
/// - `"help"`: the `start --help` line; argh wants it to start lowercase.
///
/// Adding a key is adding one row: the flag, `SEMAPHORE_AGENT_<NAME>`, the
/// YAML key, redaction and the default follow (a unit test in `config`
/// proves every row is read from all three sources). To *use* the value,
/// give `config::Config` a typed field, fill it in `Config::validate` and
/// show it in `Config::summary_value` (a test fails until a supported key
/// is in the summary).
macro_rules! config_keys {
    ($callback:ident) => {
        $callback! {
            Name, name, "name", Str, true, Public, "", "name for the agent (8-80 characters or a URL); random if unset";
            NameFromEnv, name_from_env, "name-from-env", Str, true, Public, "", "read the agent name from this environment variable";
            Endpoint, endpoint, "endpoint", Str, true, Public, "", "the Semaphore endpoint where agents register (e.g. org.semaphoreci.com)";
            Token, token, "token", Str, true, Secret, "", "agent type registration token";
            NoHttps, no_https, "no-https", Bool, true, Public, "false", "use http instead of https to talk to the endpoint";
            ShutdownHookPath, shutdown_hook_path, "shutdown-hook-path", Str, true, Public, "", "script run when the agent shuts down";
            PreJobHookPath, pre_job_hook_path, "pre-job-hook-path", Str, true, Public, "", "script run before every job";
            PostJobHookPath, post_job_hook_path, "post-job-hook-path", Str, true, Public, "", "script run after every job";
            DisconnectAfterJob, disconnect_after_job, "disconnect-after-job", Bool, true, Public, "false", "disconnect after running one job";
            JobId, job_id, "job-id", Str, true, Public, "", "request this specific job (needs --disconnect-after-job)";
            DisconnectAfterIdleTimeout, disconnect_after_idle_timeout, "disconnect-after-idle-timeout", Int, true, Public, "0", "disconnect after this many idle seconds (0 = never)";
            InterruptionGracePeriod, interruption_grace_period, "interruption-grace-period", Int, true, Public, "0", "seconds to wait for the running job after SIGTERM/SIGINT";
            EnvVars, env_vars, "env-vars", List, true, SecretValues, "", "NAME=VALUE exported in every job (repeatable, comma-separated)";
            Files, files, "files", List, true, Public, "", "host:dest files injected into docker compose jobs (repeatable, comma-separated)";
            FailOnMissingFiles, fail_on_missing_files, "fail-on-missing-files", Bool, true, Public, "false", "fail the job if a --files host path is missing";
            UploadJobLogs, upload_job_logs, "upload-job-logs", Str, true, Public, "never", "upload the job log as an artifact: never, always or when-trimmed";
            FailOnPreJobHookError, fail_on_pre_job_hook_error, "fail-on-pre-job-hook-error", Bool, true, Public, "false", "fail the job if the pre-job hook fails";
            SourcePreJobHook, source_pre_job_hook, "source-pre-job-hook", Bool, true, Public, "false", "run the pre-job hook with `source` in the job shell instead of `bash`";
            RedactEnvVars, redact_env_vars, "redact-env-vars", List, true, Public, "*_PASSWORD,*_SECRET,*_TOKEN,*_ACCESS_KEY,*_SECRET_KEY,*_PRIVATE_KEY,*_API_KEY,*_CONNECTION_STRING", "env var name globs whose values are masked in job logs (repeatable, comma-separated; '' turns it off)";
            HealthAddress, health_address, "health-address", Str, true, Public, "", "serve /healthz and /metrics on this HOST:PORT (off by default; keep it on loopback)";
            LogFormat, log_format, "log-format", Str, true, Public, "text", "format of the agent log: text (default) or json (one object per line)";
            KubernetesExecutor, kubernetes_executor, "kubernetes-executor", Bool, true, Public, "false", "run every job in its own Kubernetes pod";
            KubernetesPodSpec, kubernetes_pod_spec, "kubernetes-pod-spec", Str, true, Public, "", "the ConfigMap decorating job pods (keys pod, mainContainer, sidecarContainers)";
            KubernetesAllowedImages, kubernetes_allowed_images, "kubernetes-allowed-images", List, true, Public, "", "regexes of the images Kubernetes jobs may use (repeatable, comma-separated; default all)";
            KubernetesPodStartTimeout, kubernetes_pod_start_timeout, "kubernetes-pod-start-timeout", Int, true, Public, "300", "seconds to wait for a job pod to be ready";
            KubernetesLabels, kubernetes_labels, "kubernetes-labels", List, true, Public, "", "key=value labels of the objects made for a Kubernetes job (repeatable, comma-separated)";
            KubernetesDefaultImage, kubernetes_default_image, "kubernetes-default-image", Str, true, Public, "", "image of Kubernetes jobs that name no containers";
            Gpus, gpus, "gpus", Str, true, Public, "", "GPUs of this agent's jobs: all, or indexes or UUIDs, comma-separated (unset: no GPU handling)";
            GpuHealthCommand, gpu_health_command, "gpu-health-command", Str, true, Public, "", "command run instead of nvidia-smi to check the GPUs (with --gpus)";
            JobMemoryLimit, job_memory_limit, "job-memory-limit", Str, true, Public, "", "memory limit of each job, e.g. 512M or 4G (host jobs: their cgroup; compose: the main container)";
            JobCpus, job_cpus, "job-cpus", Str, true, Public, "", "CPUs each job may use, a decimal such as 0.5 or 2 (host jobs: their cgroup; compose: the main container)";
            JobStopGracePeriod, job_stop_grace_period, "job-stop-grace-period", Str, true, Public, "0.5", "seconds a stopped job's processes get between SIGTERM and SIGKILL";
        }
    };
}
pub(crate) use config_keys;

/// Makes the `Key` enum and its metadata from the table.
macro_rules! define_key_enum {
    ($($variant:ident, $field:ident, $name:literal, $kind:ident, $supported:literal,
       $secrecy:ident, $default:literal, $help:literal;)*) => {
        /// Every configuration key of `start`, spelled as in the Go agent's
        /// YAML file and flags.
        #[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
        pub enum Key { $($variant,)* }

        impl Key {
            /// All keys, in table order.
            pub const ALL: &'static [Key] = &[$(Key::$variant,)*];

            /// The kebab-case name used in the file and as the flag.
            pub fn name(self) -> &'static str {
                match self { $(Key::$variant => $name,)* }
            }

            /// The name of the key's field in `cli::StartArgs`.
            pub fn field(self) -> &'static str {
                match self { $(Key::$variant => stringify!($field),)* }
            }

            pub fn kind(self) -> Kind {
                match self { $(Key::$variant => Kind::$kind,)* }
            }

            /// False for keys accepted only so a Go-agent config keeps
            /// working (the Kubernetes executor).
            pub fn is_supported(self) -> bool {
                match self { $(Key::$variant => $supported,)* }
            }

            pub fn secrecy(self) -> Secrecy {
                match self { $(Key::$variant => Secrecy::$secrecy,)* }
            }

            /// The value when no source sets the key, as text.
            pub fn default_text(self) -> &'static str {
                match self { $(Key::$variant => $default,)* }
            }

            /// The key's `start --help` line.
            pub fn help(self) -> &'static str {
                match self { $(Key::$variant => $help,)* }
            }
        }
    };
}

config_keys!(define_key_enum);

impl Key {
    /// Finds a key by its kebab-case name. The Go agent's viper lower-cases
    /// file keys, so `Endpoint:` works there and must work here.
    pub fn from_name(name: &str) -> Option<Key> {
        let lower = name.to_ascii_lowercase();
        Key::ALL.iter().copied().find(|k| k.name() == lower)
    }

    /// `SEMAPHORE_AGENT_<NAME_IN_UPPER_SNAKE>`.
    pub fn env_var(self) -> String {
        format!(
            "{ENV_PREFIX}{}",
            self.name().replace('-', "_").to_ascii_uppercase()
        )
    }

    /// Whether `name` (without `--`) is a switch of `start`.
    pub fn is_switch(name: &str) -> bool {
        Key::ALL
            .iter()
            .any(|k| k.kind() == Kind::Bool && k.name() == name)
    }

    /// `value` as this key may show it: itself, `[REDACTED]`, or with
    /// the value of each `NAME=VALUE` item redacted.
    pub fn shown(self, value: &str) -> String {
        match self.secrecy() {
            Secrecy::Public => value.to_string(),
            Secrecy::Secret => REDACTED.to_string(),
            Secrecy::SecretValues => match value.split_once('=') {
                Some((name, _)) => format!("{name}={REDACTED}"),
                None => REDACTED.to_string(),
            },
        }
    }
}

impl fmt::Display for Key {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_fields_and_variants_agree() {
        for &key in Key::ALL {
            assert_eq!(key.field().replace('_', "-"), key.name(), "{key:?}");
            let camel: String = key
                .name()
                .split('-')
                .map(|w| {
                    let mut c = w.chars();
                    c.next()
                        .map(|f| f.to_ascii_uppercase().to_string() + c.as_str())
                        .unwrap_or_default()
                })
                .collect();
            assert_eq!(format!("{key:?}"), camel);
            assert_eq!(Key::from_name(key.name()), Some(key));
        }
    }

    #[test]
    fn names_are_unique() {
        for (i, a) in Key::ALL.iter().enumerate() {
            for b in &Key::ALL[i + 1..] {
                assert_ne!(a.name(), b.name());
            }
        }
    }

    #[test]
    fn redaction_follows_the_table() {
        assert_eq!(Key::Token.shown("tok-1"), REDACTED);
        assert_eq!(Key::EnvVars.shown("K=v=w"), "K=[REDACTED]");
        assert_eq!(Key::EnvVars.shown("novalue"), REDACTED);
        assert_eq!(Key::Endpoint.shown("e.example.com"), "e.example.com");
    }

    #[test]
    fn switches_are_the_bool_keys() {
        assert!(Key::is_switch("no-https"));
        assert!(!Key::is_switch("endpoint"));
        assert!(!Key::is_switch("json"));
    }
}
