//! Command-line surface: the argh structs for `start`, `run` and `version`,
//! and a small pre-pass that accepts the Go agent's `--flag=value` forms.
//!
//! This module only describes and parses arguments; it must not interpret
//! them. Merging flags with the environment and the config file, and every
//! check on a value, belongs to `config`, so that a value is validated the
//! same way whichever source it came from.
//!
//! Differences from the Go agent's pflag parsing, all documented here:
//! - `--flag=value` is accepted by rewriting it to `--flag value` before argh
//!   sees it (argh itself only knows the space form).
//! - A boolean flag is a switch (`--no-https`); `--no-https=true` and
//!   `--no-https=false` are also accepted, and the latter really sets false
//!   (it overrides the environment and the file, as in Go).
//! - Giving a single-valued flag twice is an error here; pflag keeps the last.
//! - List flags (`--env-vars`, `--files`, ...) may be repeated and each value
//!   may hold several comma-separated items, with `"..."` quoting for an item
//!   that contains a comma, as pflag's string slices do.

use std::fmt;
use std::path::PathBuf;

use argh::FromArgs;

/// Semaphore self-hosted agent.
#[derive(FromArgs, Debug, PartialEq)]
pub struct Cli {
    #[argh(subcommand)]
    pub cmd: Command,
}

/// The subcommands.
// Parsed once and kept on `main`'s stack, so the size of `StartArgs` does
// not matter; argh's derive cannot look through a `Box`.
#[allow(clippy::large_enum_variant)]
#[derive(FromArgs, Debug, PartialEq)]
#[argh(subcommand)]
pub enum Command {
    Start(StartArgs),
    Run(RunArgs),
    Version(VersionArgs),
}

/// Register with Semaphore and run the jobs it sends.
#[derive(FromArgs, PartialEq, Default)]
#[argh(
    subcommand,
    name = "start",
    note = "Every option can also be set in the --config-file YAML (the key is the \
            flag name) or in the environment as SEMAPHORE_AGENT_<NAME_IN_UPPER_SNAKE>. \
            Precedence: flag > environment > file. --flag=value also works."
)]
pub struct StartArgs {
    /// YAML config file whose keys are the flag names
    #[argh(option)]
    pub config_file: Option<PathBuf>,
    /// name for the agent (8-80 characters or a URL); random if unset
    #[argh(option)]
    pub name: Option<String>,
    /// read the agent name from this environment variable
    #[argh(option)]
    pub name_from_env: Option<String>,
    /// the Semaphore endpoint where agents register (e.g. org.semaphoreci.com)
    #[argh(option)]
    pub endpoint: Option<String>,
    /// agent type registration token
    #[argh(option)]
    pub token: Option<String>,
    /// use http instead of https to talk to the endpoint
    #[argh(switch)]
    pub no_https: bool,
    /// script run when the agent shuts down
    #[argh(option)]
    pub shutdown_hook_path: Option<String>,
    /// script run before every job
    #[argh(option)]
    pub pre_job_hook_path: Option<String>,
    /// script run after every job
    #[argh(option)]
    pub post_job_hook_path: Option<String>,
    /// disconnect after running one job
    #[argh(switch)]
    pub disconnect_after_job: bool,
    /// request this specific job (needs --disconnect-after-job)
    #[argh(option)]
    pub job_id: Option<String>,
    /// disconnect after this many idle seconds (0 = never)
    #[argh(option)]
    pub disconnect_after_idle_timeout: Option<String>,
    /// seconds to wait for the running job after SIGTERM/SIGINT
    #[argh(option)]
    pub interruption_grace_period: Option<String>,
    /// NAME=VALUE exported in every job (repeatable, comma-separated)
    #[argh(option)]
    pub env_vars: Vec<String>,
    /// host:dest files injected into docker compose jobs (repeatable, comma-separated)
    #[argh(option)]
    pub files: Vec<String>,
    /// fail the job if a --files host path is missing
    #[argh(switch)]
    pub fail_on_missing_files: bool,
    /// upload the job log as an artifact: never, always or when-trimmed
    #[argh(option)]
    pub upload_job_logs: Option<String>,
    /// fail the job if the pre-job hook fails
    #[argh(switch)]
    pub fail_on_pre_job_hook_error: bool,
    /// run the pre-job hook with `source` in the job shell instead of `bash`
    #[argh(switch)]
    pub source_pre_job_hook: bool,
    /// run every job in its own Kubernetes pod
    #[argh(switch)]
    pub kubernetes_executor: bool,
    /// the ConfigMap decorating job pods (keys pod, mainContainer, sidecarContainers)
    #[argh(option)]
    pub kubernetes_pod_spec: Option<String>,
    /// regexes of the images jobs may use (repeat or comma-separate; default all)
    #[argh(option)]
    pub kubernetes_allowed_images: Vec<String>,
    /// seconds to wait for a job pod to be ready (default 300)
    #[argh(option)]
    pub kubernetes_pod_start_timeout: Option<String>,
    /// labels key=value for the objects created for a job
    #[argh(option)]
    pub kubernetes_labels: Vec<String>,
    /// image for jobs that do not name containers
    #[argh(option)]
    pub kubernetes_default_image: Option<String>,
    /// switches explicitly turned off with `--switch=false` (set by the
    /// `--flag=value` pre-pass)
    #[argh(option, long = "switch-off", hidden_help)]
    pub switch_off: Vec<String>,
}

/// Redacted: the token and env var values must not reach a log through
/// `{:?}`.
impl fmt::Debug for StartArgs {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let redacted = |v: &Option<String>| v.as_ref().map(|_| "[REDACTED]");
        f.debug_struct("StartArgs")
            .field("config_file", &self.config_file)
            .field("name", &self.name)
            .field("name_from_env", &self.name_from_env)
            .field("endpoint", &self.endpoint)
            .field("token", &redacted(&self.token))
            .field("no_https", &self.no_https)
            .field("shutdown_hook_path", &self.shutdown_hook_path)
            .field("pre_job_hook_path", &self.pre_job_hook_path)
            .field("post_job_hook_path", &self.post_job_hook_path)
            .field("disconnect_after_job", &self.disconnect_after_job)
            .field("job_id", &self.job_id)
            .field(
                "disconnect_after_idle_timeout",
                &self.disconnect_after_idle_timeout,
            )
            .field("interruption_grace_period", &self.interruption_grace_period)
            .field("env_vars", &env_var_names(&self.env_vars))
            .field("files", &self.files)
            .field("fail_on_missing_files", &self.fail_on_missing_files)
            .field("upload_job_logs", &self.upload_job_logs)
            .field(
                "fail_on_pre_job_hook_error",
                &self.fail_on_pre_job_hook_error,
            )
            .field("source_pre_job_hook", &self.source_pre_job_hook)
            .field("kubernetes_executor", &self.kubernetes_executor)
            .field("switch_off", &self.switch_off)
            .finish_non_exhaustive()
    }
}

/// The names in `NAME=VALUE` list-flag values, each value replaced.
fn env_var_names(values: &[String]) -> Vec<String> {
    values
        .iter()
        .flat_map(|v| split_csv(v))
        .map(|e| match e.split_once('=') {
            Some((name, _)) => format!("{name}=[REDACTED]"),
            None => "[REDACTED]".to_string(),
        })
        .collect()
}

/// Run one job locally from a job file, without a control plane.
#[derive(FromArgs, PartialEq, Default)]
#[argh(subcommand, name = "run")]
pub struct RunArgs {
    /// the job request file (YAML or JSON)
    #[argh(positional)]
    pub job_file: PathBuf,
    /// print the job's events as JSON lines instead of plain output
    #[argh(switch)]
    pub json: bool,
    /// NAME=VALUE exported in the job (repeatable, comma-separated)
    #[argh(option)]
    pub env_vars: Vec<String>,
    /// script run before the job
    #[argh(option)]
    pub pre_job_hook_path: Option<String>,
    /// script run after the job
    #[argh(option)]
    pub post_job_hook_path: Option<String>,
    /// fail the job if the pre-job hook fails
    #[argh(switch)]
    pub fail_on_pre_job_hook_error: bool,
    /// run the pre-job hook with `source` in the job shell instead of `bash`
    #[argh(switch)]
    pub source_pre_job_hook: bool,
    /// switches explicitly turned off with `--switch=false`
    #[argh(option, long = "switch-off", hidden_help)]
    pub switch_off: Vec<String>,
}

impl fmt::Debug for RunArgs {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RunArgs")
            .field("job_file", &self.job_file)
            .field("json", &self.json)
            .field("env_vars", &env_var_names(&self.env_vars))
            .field("pre_job_hook_path", &self.pre_job_hook_path)
            .field("post_job_hook_path", &self.post_job_hook_path)
            .field(
                "fail_on_pre_job_hook_error",
                &self.fail_on_pre_job_hook_error,
            )
            .field("source_pre_job_hook", &self.source_pre_job_hook)
            .field("switch_off", &self.switch_off)
            .finish()
    }
}

/// Print the agent's version.
#[derive(FromArgs, Debug, PartialEq, Default)]
#[argh(subcommand, name = "version")]
pub struct VersionArgs {}

/// Every boolean switch of every subcommand, without the leading `--`. The
/// `--flag=value` pre-pass needs them to turn `--x=false` into an override
/// rather than into a value argh would reject.
const SWITCHES: &[&str] = &[
    "no-https",
    "disconnect-after-job",
    "fail-on-missing-files",
    "fail-on-pre-job-hook-error",
    "source-pre-job-hook",
    "kubernetes-executor",
    "json",
];

/// Parses Go's `strconv.ParseBool` spellings, which is what the Go agent
/// accepts for a boolean given as text.
pub fn parse_bool(s: &str) -> Option<bool> {
    match s {
        "1" | "t" | "T" | "true" | "TRUE" | "True" => Some(true),
        "0" | "f" | "F" | "false" | "FALSE" | "False" => Some(false),
        _ => None,
    }
}

/// Rewrites pflag-style arguments into the form argh understands:
/// `--flag=value` becomes `--flag value`, `--switch=true` becomes `--switch`
/// and `--switch=false` becomes `--switch-off switch`. Arguments after `--`
/// are left alone. A switch given a value that is not a boolean is an error
/// naming the flag and the value.
pub fn normalize_args(args: &[String]) -> Result<Vec<String>, String> {
    let mut out = Vec::with_capacity(args.len() + 4);
    let mut options_ended = false;
    for arg in args {
        if options_ended || !arg.starts_with("--") {
            out.push(arg.clone());
            continue;
        }
        if arg == "--" {
            options_ended = true;
            out.push(arg.clone());
            continue;
        }
        let Some((flag, value)) = arg.split_once('=') else {
            out.push(arg.clone());
            continue;
        };
        let name = &flag[2..];
        if SWITCHES.contains(&name) {
            match parse_bool(value) {
                Some(true) => out.push(flag.to_string()),
                Some(false) => {
                    out.push("--switch-off".to_string());
                    out.push(name.to_string());
                }
                None => {
                    return Err(format!(
                        "invalid value '{value}' for {flag}: expected true or false"
                    ))
                }
            }
        } else {
            out.push(flag.to_string());
            out.push(value.to_string());
        }
    }
    Ok(out)
}

impl Cli {
    /// Parses `args` (without the program name) after the `--flag=value`
    /// pre-pass. `command` is the program name used in help and errors.
    pub fn parse(command: &str, args: &[String]) -> Result<Cli, argh::EarlyExit> {
        let args = normalize_args(args).map_err(|output| argh::EarlyExit {
            output,
            status: Err(()),
        })?;
        let strs: Vec<&str> = args.iter().map(String::as_str).collect();
        <Cli as FromArgs>::from_args(&[command], &strs)
    }

    /// Parses the process arguments. On `--help` prints the help and exits
    /// 0; on a bad argument prints the error and exits 1 (argh's convention).
    pub fn from_env() -> Cli {
        let mut argv = std::env::args_os().map(|a| a.into_string());
        let program = match argv.next() {
            Some(Ok(p)) => p,
            _ => "semaphore-agent".to_string(),
        };
        let command = std::path::Path::new(&program)
            .file_name()
            .and_then(|s| s.to_str())
            .unwrap_or("semaphore-agent")
            .to_string();
        let mut args = Vec::new();
        for arg in argv {
            match arg {
                Ok(a) => args.push(a),
                Err(bad) => {
                    eprintln!("Invalid UTF-8 argument: {}", bad.to_string_lossy());
                    std::process::exit(1);
                }
            }
        }
        match Cli::parse(&command, &args) {
            Ok(cli) => cli,
            Err(exit) => match exit.status {
                Ok(()) => {
                    println!("{}", exit.output);
                    std::process::exit(0)
                }
                Err(()) => {
                    eprintln!(
                        "{}\nRun {command} --help for more information.",
                        exit.output
                    );
                    std::process::exit(1)
                }
            },
        }
    }
}

/// Splits one list-flag value the way pflag's string slices do: on commas,
/// with `"..."` quoting (and `""` for a literal quote inside quotes). Empty
/// items are dropped so that a trailing comma is harmless.
pub fn split_csv(value: &str) -> Vec<String> {
    let mut items = Vec::new();
    let mut current = String::new();
    let mut chars = value.chars().peekable();
    let mut in_quotes = false;
    let mut at_item_start = true;
    while let Some(c) = chars.next() {
        if in_quotes {
            if c == '"' {
                if chars.peek() == Some(&'"') {
                    chars.next();
                    current.push('"');
                } else {
                    in_quotes = false;
                }
            } else {
                current.push(c);
            }
            continue;
        }
        match c {
            '"' if at_item_start => {
                in_quotes = true;
                at_item_start = false;
            }
            ',' => {
                if !current.is_empty() {
                    items.push(std::mem::take(&mut current));
                }
                at_item_start = true;
            }
            _ => {
                current.push(c);
                at_item_start = false;
            }
        }
    }
    if !current.is_empty() {
        items.push(current);
    }
    items
}

#[cfg(test)]
mod tests {
    use super::*;

    fn strings(args: &[&str]) -> Vec<String> {
        args.iter().map(|s| s.to_string()).collect()
    }

    fn parse(args: &[&str]) -> Result<Cli, argh::EarlyExit> {
        Cli::parse("semaphore-agent", &strings(args))
    }

    fn start(args: &[&str]) -> StartArgs {
        match parse(args) {
            Ok(Cli {
                cmd: Command::Start(s),
            }) => s,
            Ok(other) => panic!("not start: {other:?}"),
            Err(e) => panic!("parse failed: {}", e.output),
        }
    }

    #[test]
    fn start_takes_every_go_flag() {
        let s = start(&[
            "start",
            "--config-file",
            "/etc/agent.yaml",
            "--name",
            "agent-0001",
            "--name-from-env",
            "HOSTNAME",
            "--endpoint",
            "org.semaphoreci.com",
            "--token",
            "tok",
            "--no-https",
            "--shutdown-hook-path",
            "/s.sh",
            "--pre-job-hook-path",
            "/pre.sh",
            "--post-job-hook-path",
            "/post.sh",
            "--disconnect-after-job",
            "--job-id",
            "j1",
            "--disconnect-after-idle-timeout",
            "60",
            "--interruption-grace-period",
            "30",
            "--env-vars",
            "A=1,B=2",
            "--env-vars",
            "C=3",
            "--files",
            "/a:/b",
            "--fail-on-missing-files",
            "--upload-job-logs",
            "always",
            "--fail-on-pre-job-hook-error",
            "--source-pre-job-hook",
            "--kubernetes-executor",
            "--kubernetes-pod-spec",
            "spec",
            "--kubernetes-allowed-images",
            "x",
            "--kubernetes-pod-start-timeout",
            "10",
            "--kubernetes-labels",
            "a=b",
            "--kubernetes-default-image",
            "img",
        ]);
        assert_eq!(s.config_file, Some(PathBuf::from("/etc/agent.yaml")));
        assert_eq!(s.endpoint.as_deref(), Some("org.semaphoreci.com"));
        assert!(s.no_https && s.disconnect_after_job && s.fail_on_missing_files);
        assert!(s.fail_on_pre_job_hook_error && s.source_pre_job_hook);
        assert!(s.kubernetes_executor);
        assert_eq!(s.env_vars, strings(&["A=1,B=2", "C=3"]));
        assert_eq!(s.disconnect_after_idle_timeout.as_deref(), Some("60"));
        assert_eq!(s.kubernetes_default_image.as_deref(), Some("img"));
    }

    #[test]
    fn equals_forms_are_accepted() {
        let s = start(&[
            "start",
            "--endpoint=e.example.com",
            "--token=a=b",
            "--no-https=true",
            "--disconnect-after-job=false",
            "--env-vars=A=1",
        ]);
        assert_eq!(s.endpoint.as_deref(), Some("e.example.com"));
        // Only the first '=' separates the flag from its value.
        assert_eq!(s.token.as_deref(), Some("a=b"));
        assert!(s.no_https);
        assert!(!s.disconnect_after_job);
        assert_eq!(s.switch_off, strings(&["disconnect-after-job"]));
        assert_eq!(s.env_vars, strings(&["A=1"]));
    }

    #[test]
    fn switch_with_non_bool_value_is_an_error_naming_it() {
        let err = parse(&["start", "--no-https=maybe"])
            .err()
            .map(|e| e.output);
        let msg = err.unwrap_or_default();
        assert!(msg.contains("--no-https") && msg.contains("maybe"), "{msg}");
    }

    #[test]
    fn arguments_after_double_dash_are_untouched() {
        let out = normalize_args(&strings(&["run", "--", "--x=1"])).unwrap_or_default();
        assert_eq!(out, strings(&["run", "--", "--x=1"]));
    }

    #[test]
    fn run_and_version_parse() {
        match parse(&[
            "run",
            "job.yaml",
            "--json",
            "--env-vars",
            "A=1",
            "--pre-job-hook-path",
            "/pre.sh",
            "--source-pre-job-hook",
        ]) {
            Ok(Cli {
                cmd: Command::Run(r),
            }) => {
                assert_eq!(r.job_file, PathBuf::from("job.yaml"));
                assert!(r.json && r.source_pre_job_hook && !r.fail_on_pre_job_hook_error);
                assert_eq!(r.pre_job_hook_path.as_deref(), Some("/pre.sh"));
            }
            other => panic!("unexpected: {other:?}"),
        }
        assert!(matches!(
            parse(&["version"]),
            Ok(Cli {
                cmd: Command::Version(_)
            })
        ));
    }

    #[test]
    fn help_works_for_each_subcommand() {
        for args in [
            vec!["--help"],
            vec!["start", "--help"],
            vec!["run", "--help"],
            vec!["version", "--help"],
        ] {
            match parse(&args) {
                Err(exit) => {
                    assert_eq!(exit.status, Ok(()), "{args:?}");
                    assert!(exit.output.contains("Usage"), "{}", exit.output);
                }
                Ok(cli) => panic!("--help parsed as {cli:?}"),
            }
        }
        let help = parse(&["start", "--help"]).err().map(|e| e.output);
        let help = help.unwrap_or_default();
        assert!(help.contains("--disconnect-after-idle-timeout"));
        assert!(!help.contains("--switch-off"), "hidden option shown");
    }

    #[test]
    fn unknown_flag_is_an_error() {
        let err = parse(&["start", "--bogus"]).err();
        assert!(matches!(err, Some(e) if e.status.is_err() && e.output.contains("--bogus")));
    }

    #[test]
    fn debug_output_redacts_secrets() {
        let cli = parse(&["start", "--token", "tok-123", "--env-vars", "K=hidden,N=v2"]);
        let text = format!("{cli:?}");
        assert!(
            !text.contains("tok-123") && !text.contains("hidden"),
            "{text}"
        );
        assert!(text.contains("K=[REDACTED]"), "{text}");
        let run = parse(&["run", "j.yaml", "--env-vars", "K=hidden"]);
        assert!(!format!("{run:?}").contains("hidden"));
    }

    #[test]
    fn csv_splitting() {
        assert_eq!(split_csv("A=1,B=2"), strings(&["A=1", "B=2"]));
        assert_eq!(split_csv("A=1,"), strings(&["A=1"]));
        assert_eq!(split_csv(""), Vec::<String>::new());
        assert_eq!(split_csv("\"A=1,2\",B=3"), strings(&["A=1,2", "B=3"]));
        assert_eq!(split_csv("\"A=\"\"q\"\"\""), strings(&["A=\"q\""]));
        assert_eq!(split_csv("A=hello world"), strings(&["A=hello world"]));
    }

    #[test]
    fn go_bool_spellings() {
        for t in ["1", "t", "T", "true", "TRUE", "True"] {
            assert_eq!(parse_bool(t), Some(true));
        }
        for f in ["0", "f", "F", "false", "FALSE", "False"] {
            assert_eq!(parse_bool(f), Some(false));
        }
        assert_eq!(parse_bool("yes"), None);
    }
}
